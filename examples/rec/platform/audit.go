package platform

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"google.golang.org/grpc"

	"github.com/gridmesh/gridmesh/examples/rec/policy"
	"github.com/gridmesh/gridmesh/examples/rec/recdb"
	"github.com/gridmesh/gridmesh/examples/rec/recmesh"
	"github.com/gridmesh/gridmesh/examples/rec/recpb"
	"github.com/gridmesh/gridmesh/mesh"
)

// Operator is the back office: clients of every service under the
// operator identity. Close it when done.
type Operator struct {
	Node       *recmesh.Node
	Registry   recpb.RegistryClient
	Accounts   recpb.AccountsClient
	Trading    recpb.TradingClient
	Settlement recpb.SettlementClient
	// Conns are the connections by the workload they reach.
	Conns map[string]*grpc.ClientConn
	// HTTP calls the gateway (https://, mesh mTLS) as this workload.
	HTTP *http.Client
}

// Operator connects to the platform as the operator workload.
func (p *Platform) Operator(ctx context.Context, log *slog.Logger) (*Operator, error) {
	return p.Client(ctx, policy.Operator, log)
}

// Client connects to every service as workload (any of policy.Workloads):
// the tests call as each one to check the authorization matrix.
func (p *Platform) Client(ctx context.Context, workload string, log *slog.Logger) (*Operator, error) {
	cp := ""
	if p.cfg.XDS {
		cp = p.ControlPlane
	}
	var consul *api.Config
	if p.consul != nil {
		consul = p.consul.api(workload)
	}
	node, err := recmesh.Start(ctx, recmesh.Config{Name: workload, Socket: p.Socket(workload), ControlPlane: cp, Consul: consul, Logger: log})
	if err != nil {
		return nil, err
	}
	op := &Operator{Node: node, Conns: map[string]*grpc.ClientConn{}}
	if op.HTTP, err = node.HTTPClient(policy.Gateway); err != nil {
		op.Close()
		return nil, err
	}
	for _, d := range []struct {
		w   string
		set func(*grpc.ClientConn)
	}{
		{policy.Registry, func(c *grpc.ClientConn) { op.Registry = recpb.NewRegistryClient(c) }},
		{policy.Accounts, func(c *grpc.ClientConn) { op.Accounts = recpb.NewAccountsClient(c) }},
		{policy.Trading, func(c *grpc.ClientConn) { op.Trading = recpb.NewTradingClient(c) }},
		{policy.Settlement, func(c *grpc.ClientConn) { op.Settlement = recpb.NewSettlementClient(c) }},
	} {
		cc, err := node.Dial(ctx, p.Addrs[d.w], d.w, recmesh.RoundRobin)
		if err != nil {
			op.Close()
			return nil, err
		}
		op.Conns[d.w] = cc
		d.set(cc)
	}
	return op, nil
}

// Close closes the connections and the identity source.
func (o *Operator) Close() error {
	for _, c := range o.Conns {
		c.Close()
	}
	if o.HTTP != nil {
		if t, ok := o.HTTP.Transport.(*mesh.HTTPTransport); ok {
			t.Close()
		}
	}
	return o.Node.Close()
}

// Markets are the demo's markets.
var Markets = []*recpb.Market{
	{EnergySource: "solar", Vintage: 2024}, {EnergySource: "wind", Vintage: 2024},
	{EnergySource: "hydro", Vintage: 2023}, {EnergySource: "solar", Vintage: 2025},
	{EnergySource: "wind", Vintage: 2025}, {EnergySource: "biomass", Vintage: 2024},
}

// Seed is what the operator put in before trading: the baseline of the
// conservation checks.
type Seed struct {
	Participants []string
	Markets      []*recpb.Market
	DepositCents int64 // per participant
	LotMWh       int64 // per participant and market
}

// TotalCents is the cash the seed deposited.
func (s Seed) TotalCents() int64 { return int64(len(s.Participants)) * s.DepositCents }

// TotalMWh is the MWh the seed issued.
func (s Seed) TotalMWh() int64 { return int64(len(s.Participants)*len(s.Markets)) * s.LotMWh }

// NewSeed names n participants p01, p02, ... over the demo's markets.
func NewSeed(n int, depositCents, lotMWh int64) Seed {
	s := Seed{Markets: Markets, DepositCents: depositCents, LotMWh: lotMWh}
	for i := 1; i <= n; i++ {
		s.Participants = append(s.Participants, fmt.Sprintf("p%02d", i))
	}
	return s
}

// Apply opens the accounts and issues the lots. It is idempotent.
func (s Seed) Apply(ctx context.Context, op *Operator) error {
	for _, p := range s.Participants {
		if _, err := op.Accounts.Open(ctx, &recpb.OpenRequest{Participant: p, DepositCents: s.DepositCents}); err != nil {
			return fmt.Errorf("seed: open %s: %w", p, err)
		}
		for _, m := range s.Markets {
			if _, err := op.Registry.Issue(ctx, &recpb.IssueRequest{
				LotId: "seed-" + p + "-" + recdb.MarketKey(m), Owner: p, Generator: "gen-" + m.GetEnergySource() + "-" + p, Market: m, Mwh: s.LotMWh,
			}); err != nil {
				return fmt.Errorf("seed: issue to %s: %w", p, err)
			}
		}
	}
	return nil
}

// Ack is an order as the gateway acknowledged it to a participant.
type Ack struct {
	OrderID string
	Status  recpb.OrderStatus
	Filled  int64
	Fills   int
}

// Check is one invariant and whether it held.
type Check struct {
	Name   string
	OK     bool
	Detail string
}

// Report is the audit's outcome.
type Report struct {
	Trading    *recpb.TradingStats
	Settlement *recpb.SettlementStats
	Registry   *recpb.RegistryTotals
	Accounts   *recpb.AccountsTotals
	Checks     []Check
	// SettleWait is how long settlement took to catch up with the journal.
	SettleWait time.Duration
}

// OK reports whether every check held.
func (r *Report) OK() bool {
	for _, c := range r.Checks {
		if !c.OK {
			return false
		}
	}
	return true
}

func (r *Report) check(name string, ok bool, format string, args ...any) {
	r.Checks = append(r.Checks, Check{Name: name, OK: ok, Detail: fmt.Sprintf(format, args...)})
}

// Audit waits for settlement to apply the whole journal, then checks the
// invariants: nothing created or destroyed (MWh, cents), every trade
// settled exactly once on both legs, holds matching the open orders, every
// participant's cash and MWh equal to the seed plus their trades, and every
// acknowledged order present in the journal as acknowledged. unknown is
// the number of orders whose outcome the clients never learned.
func Audit(ctx context.Context, op *Operator, seed Seed, acks []Ack, unknown int) (*Report, error) {
	r := &Report{}
	start := time.Now()
	var err error
	if r.Trading, r.Settlement, err = WaitSettled(ctx, op); err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	r.SettleWait = time.Since(start)
	if r.Registry, err = op.Registry.Totals(ctx, &recpb.TotalsRequest{}); err != nil {
		return nil, fmt.Errorf("audit: registry totals: %w", err)
	}
	if r.Accounts, err = op.Accounts.Totals(ctx, &recpb.TotalsRequest{}); err != nil {
		return nil, fmt.Errorf("audit: accounts totals: %w", err)
	}
	t, s, g, a := r.Trading, r.Settlement, r.Registry, r.Accounts

	r.check("MWh conserved", g.GetTotalMwh() == seed.TotalMWh(), "registry holds %d MWh, %d issued", g.GetTotalMwh(), seed.TotalMWh())
	r.check("cash conserved", a.GetTotalCents() == seed.TotalCents(), "accounts hold %d cents, %d deposited", a.GetTotalCents(), seed.TotalCents())
	r.check("every trade settled once", s.GetTradesSettled() == t.GetTrades() && s.GetSettledMwh() == t.GetTradedMwh() && s.GetSettledCents() == t.GetTradedCents(),
		"settled %d trades (%d MWh, %d cents) of %d (%d MWh, %d cents)", s.GetTradesSettled(), s.GetSettledMwh(), s.GetSettledCents(), t.GetTrades(), t.GetTradedMwh(), t.GetTradedCents())
	r.check("ownership moved once per trade", g.GetTransfers() == t.GetTrades() && g.GetTransferredMwh() == t.GetTradedMwh(),
		"registry applied %d transfers (%d MWh) for %d trades (%d MWh)", g.GetTransfers(), g.GetTransferredMwh(), t.GetTrades(), t.GetTradedMwh())
	r.check("cash moved once per trade", a.GetCaptures() == t.GetTrades() && a.GetCapturedCents() == t.GetTradedCents(),
		"accounts applied %d captures (%d cents) for %d trades (%d cents)", a.GetCaptures(), a.GetCapturedCents(), t.GetTrades(), t.GetTradedCents())
	r.check("held MWh = open sell orders", g.GetHeldMwh() == t.GetOpenSellMwh(), "registry holds %d MWh, open sells have %d left", g.GetHeldMwh(), t.GetOpenSellMwh())
	r.check("held cash = open buy orders", a.GetHeldCents() == t.GetOpenBuyHoldCents(), "accounts hold %d cents, open buys need %d", a.GetHeldCents(), t.GetOpenBuyHoldCents())

	// Per participant: seed + trades.
	cash := map[string]int64{}
	mwh := map[string]int64{}
	for _, p := range seed.Participants {
		cash[p] = seed.DepositCents
		for _, m := range seed.Markets {
			mwh[p+"|"+recdb.MarketKey(m)] = seed.LotMWh
		}
	}
	var after int64
	for {
		ev, err := op.Trading.Events(ctx, &recpb.EventsRequest{AfterSeq: after, Limit: 1000})
		if err != nil {
			return nil, fmt.Errorf("audit: journal: %w", err)
		}
		for _, e := range ev.GetEvents() {
			after = e.GetSeq()
			tr := e.GetTrade()
			if tr == nil {
				continue
			}
			cost := tr.GetMwh() * tr.GetPriceCents()
			cash[tr.GetBuyer()] -= cost
			cash[tr.GetSeller()] += cost
			k := recdb.MarketKey(tr.GetMarket())
			mwh[tr.GetBuyer()+"|"+k] += tr.GetMwh()
			mwh[tr.GetSeller()+"|"+k] -= tr.GetMwh()
		}
		if len(ev.GetEvents()) == 0 {
			break
		}
	}
	var bad []string
	for _, p := range seed.Participants {
		acct, err := op.Accounts.Balance(ctx, &recpb.BalanceRequest{Participant: p})
		if err != nil {
			return nil, fmt.Errorf("audit: balance of %s: %w", p, err)
		}
		if acct.GetBalanceCents() != cash[p] {
			bad = append(bad, fmt.Sprintf("%s has %d cents, trades say %d", p, acct.GetBalanceCents(), cash[p]))
		}
		h, err := op.Registry.Holdings(ctx, &recpb.HoldingsRequest{Owner: p})
		if err != nil {
			return nil, fmt.Errorf("audit: holdings of %s: %w", p, err)
		}
		got := map[string]int64{}
		for _, x := range h.GetHoldings() {
			got[recdb.MarketKey(x.GetMarket())] = x.GetMwh() + x.GetRetiredMwh()
		}
		for _, m := range seed.Markets {
			k := recdb.MarketKey(m)
			if got[k] != mwh[p+"|"+k] {
				bad = append(bad, fmt.Sprintf("%s has %d MWh of %s, trades say %d", p, got[k], k, mwh[p+"|"+k]))
			}
		}
	}
	r.check("each participant = seed + trades", len(bad) == 0, "%d participants checked; %d mismatches %v", len(seed.Participants), len(bad), first(bad, 3))

	if acks != nil {
		var lost []string
		for _, ack := range acks {
			o, err := op.Trading.GetOrder(ctx, &recpb.GetOrderRequest{OrderId: ack.OrderID})
			switch {
			case err != nil:
				lost = append(lost, fmt.Sprintf("%s: %v", ack.OrderID, err))
			case (ack.Status == recpb.OrderStatus_REJECTED) != (o.GetStatus() == recpb.OrderStatus_REJECTED):
				lost = append(lost, fmt.Sprintf("%s acknowledged %v, journal says %v", ack.OrderID, ack.Status, o.GetStatus()))
			case o.GetFilledMwh() < ack.Filled || len(o.GetFills()) < ack.Fills:
				lost = append(lost, fmt.Sprintf("%s acknowledged with %d MWh in %d fills, journal has %d in %d", ack.OrderID, ack.Filled, ack.Fills, o.GetFilledMwh(), len(o.GetFills())))
			}
		}
		r.check("no acknowledged order lost", len(lost) == 0, "%d acknowledged orders found in the journal as acknowledged; %d missing or changed %v", len(acks)-len(lost), len(lost), first(lost, 3))
		journal := t.GetOrdersAccepted() + t.GetOrdersRejected()
		ok := journal >= int64(len(acks)) && journal <= int64(len(acks)+unknown)
		r.check("no order placed twice", ok, "journal has %d orders for %d acknowledged (+%d with unknown outcome)", journal, len(acks), unknown)
	}
	return r, nil
}

// WaitSettled polls until settlement has applied the whole trading journal
// and returns both sides' stats.
func WaitSettled(ctx context.Context, op *Operator) (*recpb.TradingStats, *recpb.SettlementStats, error) {
	for {
		t, err := op.Trading.Stats(ctx, &recpb.TradingStatsRequest{})
		if err != nil {
			return nil, nil, fmt.Errorf("trading stats: %w", err)
		}
		s, err := op.Settlement.Stats(ctx, &recpb.SettlementStatsRequest{})
		if err != nil {
			return nil, nil, fmt.Errorf("settlement stats: %w", err)
		}
		if s.GetCursor() >= t.GetLastSeq() {
			return t, s, nil
		}
		select {
		case <-ctx.Done():
			return nil, nil, fmt.Errorf("settlement stuck at journal seq %d of %d: %w", s.GetCursor(), t.GetLastSeq(), ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func first(s []string, n int) []string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// Print writes the report.
func (r *Report) Print(w io.Writer) {
	t, s, g, a := r.Trading, r.Settlement, r.Registry, r.Accounts
	fmt.Fprintf(w, "orders:     %d accepted, %d rejected (no MWh or cash to hold), %d open, %d cancelled, %d voided by the reconciler\n",
		t.GetOrdersAccepted(), t.GetOrdersRejected(), t.GetOrdersOpen(), t.GetOrdersCancelled(), t.GetOrdersVoided())
	fmt.Fprintf(w, "trades:     %d (%d MWh, $%.2f); %d settled, %d holds released; settlement caught up in %v\n",
		t.GetTrades(), t.GetTradedMwh(), float64(t.GetTradedCents())/100, s.GetTradesSettled(), s.GetHoldsReleased(), r.SettleWait.Round(time.Millisecond))
	fmt.Fprintf(w, "markets:    %d moves between trading instances\n", t.GetMarketMoves())
	fmt.Fprintf(w, "registry:   %d MWh in %d lots (%d retired, %d held), %d transfers; accounts: $%.2f (%.2f held), %d captures\n",
		g.GetTotalMwh(), g.GetLots(), g.GetRetiredMwh(), g.GetHeldMwh(), g.GetTransfers(), float64(a.GetTotalCents())/100, float64(a.GetHeldCents())/100, a.GetCaptures())
	fmt.Fprintln(w, "checks:")
	for _, c := range r.Checks {
		mark := "ok  "
		if !c.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(w, "  %s %-34s %s\n", mark, c.Name, c.Detail)
	}
}

// GatewayMesh reads the gateway's /debug/mesh and sums up what its
// resilience client did, in one line.
func (p *Platform) GatewayMesh(ctx context.Context, op *Operator) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.GatewayURL+"/debug/mesh", nil)
	if err != nil {
		return "", err
	}
	resp, err := op.HTTP.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var d struct {
		Resilience struct {
			Retries  map[string]int `json:"retries"`
			Breakers []string       `json:"breaker_changes"`
			Budget   int            `json:"budget_exhausted"`
			Rejected int            `json:"rejected"`
		} `json:"resilience"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil {
		return "", fmt.Errorf("gateway /debug/mesh: %w", err)
	}
	var total int
	var kinds []string
	for k, n := range d.Resilience.Retries {
		total += n
		kinds = append(kinds, fmt.Sprintf("%s ×%d", strings.TrimPrefix(k, "/gridmesh.examples.rec."), n))
	}
	slices.Sort(kinds)
	return fmt.Sprintf("%d retries (%s); %d breaker changes; %d retries denied by the budget; %d calls refused locally",
		total, strings.Join(kinds, ", "), len(d.Resilience.Breakers), d.Resilience.Budget, d.Resilience.Rejected), nil
}

// WatchRotations counts, until ctx ends, the new SVIDs the operator's
// identity source hands out (meshd dev rotates them at half their life);
// the returned func reads the count.
func (o *Operator) WatchRotations(ctx context.Context) func() int {
	var mu sync.Mutex
	seen := map[string]bool{}
	serial := func() string {
		svid, err := o.Node.Src.GetX509SVID()
		if err != nil || len(svid.Certificates) == 0 {
			return ""
		}
		return svid.Certificates[0].SerialNumber.String()
	}
	first := serial()
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
			if s := serial(); s != "" && s != first {
				mu.Lock()
				seen[s] = true
				mu.Unlock()
			}
		}
	}()
	return func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(seen)
	}
}
