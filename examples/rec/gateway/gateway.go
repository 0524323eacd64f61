// Package gateway is the participants' HTTP JSON API in front of the REC
// services. It is a plain http.Handler so that it can be served by any
// server (the mesh HTTP server once it exists, see cmd/gateway).
//
//	POST   /v1/orders                          place (Idempotency-Key header required)
//	GET    /v1/orders/{id}                     an order and its fills
//	DELETE /v1/orders/{id}?participant=P       cancel
//	GET    /v1/markets/{source}/{vintage}/book the order book
//	GET    /v1/trades?participant=&source=&vintage=&limit=
//	GET    /v1/trades/{id}                     a trade's settlement
//	GET    /v1/participants/{p}/holdings       RECs owned, held and retired
//	GET    /v1/participants/{p}/balance        cash and holds
//	POST   /v1/participants/{p}/retirements    retire RECs (Idempotency-Key)
//
// The order id is derived from the participant and the Idempotency-Key, so
// a client that repeats a request after a lost response (same key, same
// body) reaches the same order, whichever gateway or trading instance
// serves the repeat.
//
// The mesh HTTP server in front of it (cmd/gateway) lets only the portal
// workload trade (policy.GatewayRoutes). Participants are named in the
// request: the portal authenticates the people behind them, which is
// outside this example.
package gateway

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/gridmesh/gridmesh/examples/rec/recdb"
	"github.com/gridmesh/gridmesh/examples/rec/recpb"
	"github.com/gridmesh/gridmesh/mesh"
	"github.com/gridmesh/gridmesh/resilience"
	"github.com/gridmesh/gridmesh/resilience/idempotency"
)

// MarketHeader is the metadata key the trading client's ring hash reads.
const MarketHeader = "x-rec-market"

// Clients are the services the gateway calls.
type Clients struct {
	Trading    recpb.TradingClient
	Registry   recpb.RegistryClient
	Accounts   recpb.AccountsClient
	Settlement recpb.SettlementClient
}

// OrderRequest is the body of POST /v1/orders.
type OrderRequest struct {
	Participant  string `json:"participant"`
	EnergySource string `json:"energy_source"`
	Vintage      int32  `json:"vintage"`
	Side         string `json:"side"` // "buy" or "sell"
	PriceCents   int64  `json:"price_cents"`
	MWh          int64  `json:"mwh"`
}

// RetireRequest is the body of POST /v1/participants/{p}/retirements.
type RetireRequest struct {
	EnergySource string `json:"energy_source"`
	Vintage      int32  `json:"vintage"`
	MWh          int64  `json:"mwh"`
}

// OrderID is the order id the gateway uses for participant's request with
// idempotency key key.
func OrderID(participant, key string) string {
	sum := sha256.Sum256([]byte(participant + "\x00" + key))
	return "o-" + hex.EncodeToString(sum[:12])
}

// CallTimeout bounds each request's calls to the services, retries
// included.
const CallTimeout = 20 * time.Second

// Handler returns the API. Keyed POSTs go through the idempotency
// middleware with store (a recdb.Store in the gateway's database), so a
// repeat is answered from the first response.
func Handler(c Clients, store idempotency.Store) http.Handler {
	g := &gw{c: c}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/orders", g.place)
	mux.HandleFunc("GET /v1/orders/{id}", g.getOrder)
	mux.HandleFunc("DELETE /v1/orders/{id}", g.cancel)
	mux.HandleFunc("GET /v1/markets/{source}/{vintage}/book", g.book)
	mux.HandleFunc("GET /v1/trades", g.trades)
	mux.HandleFunc("GET /v1/trades/{id}", g.trade)
	mux.HandleFunc("GET /v1/participants/{p}/holdings", g.holdings)
	mux.HandleFunc("GET /v1/participants/{p}/balance", g.balance)
	mux.HandleFunc("POST /v1/participants/{p}/retirements", g.retire)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	// Keys are scoped by the caller's SPIFFE ID, as on the gRPC side.
	ids := idempotency.NewServer(store, func(ctx context.Context) string {
		id, _ := mesh.PeerID(ctx)
		return id.String()
	})
	return ids.Handler(mux)
}

type gw struct{ c Clients }

var marshal = protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true, UseEnumNumbers: false}

func writeProto(w http.ResponseWriter, code int, m proto.Message) {
	b, err := marshal.Marshal(m)
	if err != nil {
		writeErr(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}

type errBody struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

// writeErr maps a gRPC error to HTTP. Only definite answers get a 4xx; any
// failure that may not have been decided is 503, which the idempotency
// middleware does not store, so the client's repeat runs again.
func writeErr(w http.ResponseWriter, err error) {
	st := status.Convert(err)
	code := http.StatusServiceUnavailable
	switch st.Code() {
	case codes.InvalidArgument:
		code = http.StatusBadRequest
	case codes.NotFound:
		code = http.StatusNotFound
	case codes.AlreadyExists, codes.FailedPrecondition:
		// Not 409: the idempotency middleware answers 409 while a
		// repeat's first copy is in flight, which clients retry.
		code = http.StatusUnprocessableEntity
	case codes.PermissionDenied:
		code = http.StatusForbidden
	}
	if code == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(errBody{Error: st.Message(), Code: st.Code().String()})
}

func badRequest(w http.ResponseWriter, format string, args ...any) {
	writeErr(w, status.Errorf(codes.InvalidArgument, format, args...))
}

func (g *gw) place(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get(idempotency.Header)
	if key == "" {
		badRequest(w, "the %s header is required: a fresh UUID per order, the same one when repeating it", idempotency.Header)
		return
	}
	var req OrderRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		badRequest(w, "body: %v", err)
		return
	}
	var side recpb.Side
	switch strings.ToLower(req.Side) {
	case "buy":
		side = recpb.Side_BUY
	case "sell":
		side = recpb.Side_SELL
	default:
		badRequest(w, "side %q: want buy or sell", req.Side)
		return
	}
	m := &recpb.Market{EnergySource: req.EnergySource, Vintage: req.Vintage}
	id := OrderID(req.Participant, key)
	ctx, cancel := context.WithTimeout(r.Context(), CallTimeout)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, MarketHeader, recdb.MarketKey(m))
	ctx = resilience.WithIdempotencyKey(ctx, id)
	o, err := g.c.Trading.PlaceOrder(ctx, &recpb.PlaceOrderRequest{
		OrderId: id, Participant: req.Participant, Market: m, Side: side, PriceCents: req.PriceCents, Mwh: req.MWh,
	})
	if err != nil {
		writeErr(w, err)
		return
	}
	code := http.StatusCreated
	if o.GetStatus() == recpb.OrderStatus_REJECTED {
		code = http.StatusUnprocessableEntity
	}
	writeProto(w, code, o)
}

func (g *gw) getOrder(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), CallTimeout)
	defer cancel()
	o, err := g.c.Trading.GetOrder(ctx, &recpb.GetOrderRequest{OrderId: r.PathValue("id")})
	if err != nil {
		writeErr(w, err)
		return
	}
	writeProto(w, http.StatusOK, o)
}

func (g *gw) cancel(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), CallTimeout)
	defer cancel()
	id := r.PathValue("id")
	// Route the cancel to the market's instance, like the order.
	o, err := g.c.Trading.GetOrder(ctx, &recpb.GetOrderRequest{OrderId: id})
	if err != nil {
		writeErr(w, err)
		return
	}
	ctx = metadata.AppendToOutgoingContext(ctx, MarketHeader, recdb.MarketKey(o.GetMarket()))
	o, err = g.c.Trading.CancelOrder(ctx, &recpb.CancelOrderRequest{OrderId: id, Participant: r.URL.Query().Get("participant")})
	if err != nil {
		writeErr(w, err)
		return
	}
	writeProto(w, http.StatusOK, o)
}

func market(source, vintage string) (*recpb.Market, error) {
	v, err := strconv.Atoi(vintage)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "vintage %q: want a year", vintage)
	}
	return &recpb.Market{EnergySource: source, Vintage: int32(v)}, nil
}

func (g *gw) book(w http.ResponseWriter, r *http.Request) {
	m, err := market(r.PathValue("source"), r.PathValue("vintage"))
	if err != nil {
		writeErr(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), CallTimeout)
	defer cancel()
	ctx = metadata.AppendToOutgoingContext(ctx, MarketHeader, recdb.MarketKey(m))
	b, err := g.c.Trading.Book(ctx, &recpb.BookRequest{Market: m})
	if err != nil {
		writeErr(w, err)
		return
	}
	writeProto(w, http.StatusOK, b)
}

func (g *gw) trades(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	req := &recpb.TradesRequest{Participant: q.Get("participant")}
	if s := q.Get("source"); s != "" {
		m, err := market(s, q.Get("vintage"))
		if err != nil {
			writeErr(w, err)
			return
		}
		req.Market = m
	}
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil {
			badRequest(w, "limit %q: want a number", l)
			return
		}
		req.Limit = int32(n)
	}
	ctx, cancel := context.WithTimeout(r.Context(), CallTimeout)
	defer cancel()
	ts, err := g.c.Trading.Trades(ctx, req)
	if err != nil {
		writeErr(w, err)
		return
	}
	writeProto(w, http.StatusOK, ts)
}

func (g *gw) trade(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), CallTimeout)
	defer cancel()
	t, err := g.c.Settlement.GetTrade(ctx, &recpb.GetTradeRequest{TradeId: r.PathValue("id")})
	if err != nil {
		writeErr(w, err)
		return
	}
	writeProto(w, http.StatusOK, t)
}

func (g *gw) holdings(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), CallTimeout)
	defer cancel()
	h, err := g.c.Registry.Holdings(ctx, &recpb.HoldingsRequest{Owner: r.PathValue("p")})
	if err != nil {
		writeErr(w, err)
		return
	}
	writeProto(w, http.StatusOK, h)
}

func (g *gw) balance(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), CallTimeout)
	defer cancel()
	a, err := g.c.Accounts.Balance(ctx, &recpb.BalanceRequest{Participant: r.PathValue("p")})
	if err != nil {
		writeErr(w, err)
		return
	}
	writeProto(w, http.StatusOK, a)
}

func (g *gw) retire(w http.ResponseWriter, r *http.Request) {
	key := r.Header.Get(idempotency.Header)
	if key == "" {
		badRequest(w, "the %s header is required", idempotency.Header)
		return
	}
	var req RetireRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		badRequest(w, "body: %v", err)
		return
	}
	p := r.PathValue("p")
	ctx, cancel := context.WithTimeout(r.Context(), CallTimeout)
	defer cancel()
	id := "r-" + strings.TrimPrefix(OrderID(p, key), "o-")
	rr, err := g.c.Registry.Retire(resilience.WithIdempotencyKey(ctx, id), &recpb.RetireRequest{
		RetirementId: id, Owner: p, Market: &recpb.Market{EnergySource: req.EnergySource, Vintage: req.Vintage}, Mwh: req.MWh,
	})
	if err != nil {
		writeErr(w, err)
		return
	}
	writeProto(w, http.StatusCreated, rr)
}

// IsRetryable reports whether an HTTP status from the gateway means the
// request may not have been decided, so the client should repeat it with
// the same Idempotency-Key.
func IsRetryable(code int) bool {
	switch code {
	case http.StatusServiceUnavailable, http.StatusConflict, http.StatusTooManyRequests,
		http.StatusBadGateway, http.StatusGatewayTimeout, http.StatusRequestTimeout:
		return true
	}
	return false
}
