// Package rec is gridmesh's showcase: a Renewable Energy Certificate (REC)
// trading platform built from meshed services, where a lost or doubled
// trade is unacceptable. It uses only public gridmesh API (mesh, security,
// discovery, resilience, telemetry).
//
// Run it:
//
//	make demo                                  # or:
//	go build -o bin/ ./cmd/meshd ./examples/rec/cmd/...
//	bin/recdemo -bin bin                       # -hold keeps it up, -keep keeps logs and databases
//	bin/recdemo -bin bin -xds                  # the same on meshd's xDS
//	go test -race ./examples/rec/...           # unit tests and the fault-tolerance e2e test
//
// recdemo starts `meshd dev` (the SPIFFE Workload API from a dev CA, one
// socket per workload, SVIDs rotating every few seconds, and xDS), then
// every service as its own process (cmd/registry, cmd/accounts, two
// cmd/trading, cmd/settlement, cmd/gateway), places orders by hand, runs
// load while it kills (SIGKILL) and restarts trading-1, audits the books
// and prints a summary; it exits non-zero if an invariant fails. While it
// runs (-hold), each service has a mesh admin endpoint (/status,
// /identity, /targets, /config, /denials, /events) and a Prometheus
// endpoint, listed at start; OTEL_TRACES_EXPORTER=otlp sends traces.
// cmd/recload loads a running gateway as the portal workload.
//
// On a real SPIRE agent instead of meshd dev's identities (SPIRE from
// tools/spire, which registers each service by its binary, and the
// operator and portal identities for the demo runner itself):
//
//	bash tools/spire/up.sh -l 60 /registry=$PWD/bin/registry /accounts=$PWD/bin/accounts \
//	    /trading=$PWD/bin/trading /settlement=$PWD/bin/settlement /gateway=$PWD/bin/gateway /meshd=$PWD/bin/meshd /operator /portal
//	bin/recdemo -bin bin -spiffe-socket unix:///tmp/gridmesh-spire/agent.sock [-xds]
//	bash tools/spire/down.sh
//
// Two ways to run the mesh: by default clients dial static:/// targets
// (gridmesh's discovery and ring-hash balancer) and servers enforce the
// matrix in code. With -xds, servers register with meshd
// (mesh.WithControlPlane, mesh.WithXDSService) and take mTLS and RBAC from
// it, clients dial xds:///<service>, and meshd's config is generated from
// the same matrix (policy.MeshdConfig), ring hash on the market included;
// the in-code authorizer stays on behind meshd's RBAC.
//
// # Services
//
// Each is its own binary (cmd/<service>) and process, with its own SQLite
// database (modernc.org/sqlite, no cgo) in WAL mode with synchronous=FULL,
// so a committed transaction survives kill -9 and power loss:
//
//	registry    certificates as lots (generator, energy source, vintage, MWh): issue,
//	            hold for sell orders, transfer, retire, holdings
//	accounts    participants' cash in integer cents: open, hold for buy orders,
//	            capture, release, balance
//	trading     limit orders, price-time matching per market (energy source + vintage);
//	            two or more instances sharing one journal
//	settlement  applies every trade once: MWh from the seller's hold to the buyer,
//	            cash from the buyer's hold to the seller
//	gateway     the participants' HTTP JSON API, on the mesh HTTP server
//
// Protos are in recpb (rec.proto); writes are idempotent on a caller-chosen
// id and declared idempotency_level = IDEMPOTENT, reads NO_SIDE_EFFECTS, so
// the mesh's resilience client retries them. Regenerate with `make proto`.
//
// # Trading: one market, one instance, no lost order
//
// An order's life: the gateway derives the order id from the participant and
// the request's Idempotency-Key, and calls Trading.PlaceOrder with the
// market ("solar:2024") in the x-rec-market header, which the gateway's
// ring_hash balancer (discovery.RingHash) hashes, so every order of a market
// goes to the same instance while it is up. The instance first places the
// hold (Accounts.Hold for a buy: price × MWh; Registry.Hold for a sell: the
// MWh), keyed by the order id; then, in one SQLite transaction, it records
// the order, matches it against the book (best price first, then earliest
// accepted; trades at the resting order's price; a participant's orders
// never match each other) and appends the trades and closed orders to the
// journal. The reply comes only after the commit: an acknowledged order is
// durable.
//
// The instances share that database, the journal. When an instance dies,
// the ring sends its markets to the next instance on the ring, which
// continues from the same book: nothing needs recovering, because nothing
// lived only in the dead instance's memory. Correctness does not rest on
// the routing either: matching runs inside a write transaction (BEGIN
// IMMEDIATE), and SQLite admits one writer at a time across processes, so
// even two instances briefly serving one market (while a ring changes,
// which the demo shows as "market moves") match against a consistent book.
// The ring keeps a market's traffic in one process, where a per-market
// mutex orders it without waiting on the file lock.
//
// A PlaceOrder cut off by a crash is repeated by the gateway's resilience
// client (the method is IDEMPOTENT and keyed) and lands on the next
// instance. The server's idempotency store (recdb.Store, in the journal
// database) answers ABORTED while the dead instance's claim looks in
// flight, then, after recdb.StaleAfter, lets the repeat take the claim
// over. Running the handler again is safe: the hold is keyed by the order
// id and the order id is the orders table's unique key, so the repeat finds
// the accepted order, or accepts it now, once.
//
// A hold placed for an order that then never reached the journal (its
// instance died between the hold and the commit, and the client gave up
// instead of repeating the request) would stay held. Each trading instance
// reconciles: holds older than -reconcile-after (1m) without an order get
// their order id recorded as voided, in a transaction, so the order can no
// longer be accepted (a late repeat is rejected), and only then released.
//
// The shared journal is SQLite on one host, the embedded default; a
// deployment across hosts would put it on a server database (the schema and
// transactions carry over) or replicate it. That is the design's limit: the
// journal is the single point of truth and of failure.
//
// # Settlement: exactly once
//
// Settlement consumes the journal in order (Trading.Events after a durable
// cursor; sequence numbers are assigned under the write lock, so they
// become visible in order and a cursor never skips one). For a trade it
// calls Registry.Transfer and Accounts.Capture, each with the trade id as
// its transfer id (a primary key, written in the same transaction as the
// transfer) and as the idempotency key of the call; for a closed order it
// releases what is left of the hold. Only then does the cursor move past
// the event. A crash anywhere repeats the event, and the legs answer with
// their first result: each trade moves MWh and cash exactly once, and the
// totals are conserved. Holds make the legs unable to fail for lack of
// funds: the MWh and cash were reserved when the order was accepted.
//
// # Authorization
//
// Every service is default-deny; package policy holds the matrix of which
// workload (SPIFFE ID spiffe://<td>/<name>) may call which method, and of
// which may call which gateway route. Only settlement may transfer
// ownership or capture cash; the gateway may read holdings but not
// transfer them; only the portal workload may trade through the gateway.
// The tests call every (workload, method) and (workload, route) pair and
// check each denied pair gets PERMISSION_DENIED / 403.
//
// # What proves it
//
// e2e.TestKillTradingAndSettlementUnderLoad runs every service as a
// process, places 2,000 orders from 16 concurrent participants with SVIDs
// that live 10 seconds, and kills (SIGKILL) and restarts trading-1,
// settlement and trading-2 in turn. It then audits (platform.Audit): no
// acknowledged order lost or changed, no order placed twice, every trade
// settled exactly once on both legs, MWh and cash conserved in total and
// per participant, the remaining holds equal to the open orders, and the
// whole authorization matrix enforced.
package rec
