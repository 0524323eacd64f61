package registry_test

import (
	"context"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/examples/rec/recpb"
	"github.com/gridmesh/gridmesh/examples/rec/rectest"
	"github.com/gridmesh/gridmesh/examples/rec/registry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var hydro = &recpb.Market{EnergySource: "hydro", Vintage: 2023}

func TestHoldTransferRetireConserveMWh(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r := registry.New(rectest.Open(t, t.TempDir(), "registry", registry.Schema...))
	for _, l := range []*recpb.IssueRequest{
		{LotId: "l1", Owner: "a", Generator: "dam-1", Market: hydro, Mwh: 4},
		{LotId: "l2", Owner: "a", Generator: "dam-2", Market: hydro, Mwh: 6},
	} {
		if _, err := r.Issue(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	// Issue is idempotent on the lot id.
	if l, err := r.Issue(ctx, &recpb.IssueRequest{LotId: "l1", Owner: "a", Generator: "dam-1", Market: hydro, Mwh: 4}); err != nil || l.GetMwh() != 4 {
		t.Fatalf("repeated issue: %v, %v", l, err)
	}
	if _, err := r.Hold(ctx, &recpb.HoldRequest{HoldId: "h1", Owner: "a", Market: hydro, Mwh: 7}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Hold(ctx, &recpb.HoldRequest{HoldId: "h2", Owner: "a", Market: hydro, Mwh: 4}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("hold beyond the free MWh: %v, want FailedPrecondition", err)
	}
	if _, err := r.Retire(ctx, &recpb.RetireRequest{RetirementId: "r0", Owner: "a", Market: hydro, Mwh: 4}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("retiring held MWh: %v, want FailedPrecondition", err)
	}
	// A transfer of 5 takes all of l1 and 1 of l2, oldest first.
	tr, err := r.Transfer(ctx, &recpb.TransferRequest{TransferId: "t1", HoldId: "h1", To: "b", Mwh: 5})
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.GetLots()) != 2 || tr.GetLots()[0].GetParentLotId() != "l1" || tr.GetLots()[0].GetMwh() != 4 || tr.GetLots()[1].GetMwh() != 1 {
		t.Errorf("transfer split %v, want 4 MWh from l1 and 1 from l2", tr.GetLots())
	}
	again, err := r.Transfer(ctx, &recpb.TransferRequest{TransferId: "t1", HoldId: "h1", To: "b", Mwh: 5})
	if err != nil || len(again.GetLots()) != 2 {
		t.Errorf("repeated transfer: %v, %v; want the same two lots", again, err)
	}
	if _, err := r.Transfer(ctx, &recpb.TransferRequest{TransferId: "t2", HoldId: "h1", To: "b", Mwh: 3}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("transfer beyond the hold: %v, want FailedPrecondition", err)
	}
	if rel, err := r.Release(ctx, &recpb.ReleaseRequest{HoldId: "h1"}); err != nil || rel.GetReleased() != 2 {
		t.Errorf("release: %v, %v; want 2 MWh back", rel, err)
	}
	if rel, err := r.Release(ctx, &recpb.ReleaseRequest{HoldId: "h1"}); err != nil || rel.GetReleased() != 0 {
		t.Errorf("repeated release: %v, %v; want 0", rel, err)
	}
	// A release that overtakes its hold leaves a tombstone: the late hold
	// holds nothing.
	if _, err := r.Release(ctx, &recpb.ReleaseRequest{HoldId: "late"}); err != nil {
		t.Fatal(err)
	}
	if h, err := r.Hold(ctx, &recpb.HoldRequest{HoldId: "late", Owner: "a", Market: hydro, Mwh: 1}); err != nil || h.GetRemainingMwh() != 0 {
		t.Errorf("hold after its release: %v, %v; want 0 MWh held", h, err)
	}
	if _, err := r.Retire(ctx, &recpb.RetireRequest{RetirementId: "r1", Owner: "b", Market: hydro, Mwh: 3}); err != nil {
		t.Fatal(err)
	}

	tot, err := r.Totals(ctx, &recpb.TotalsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if tot.GetTotalMwh() != 10 || tot.GetRetiredMwh() != 3 || tot.GetHeldMwh() != 0 || tot.GetTransfers() != 1 {
		t.Errorf("totals %v: want 10 MWh, 3 retired, none held, 1 transfer", tot)
	}
	hb, err := r.Holdings(ctx, &recpb.HoldingsRequest{Owner: "b"})
	if err != nil || len(hb.GetHoldings()) != 1 || hb.GetHoldings()[0].GetMwh() != 2 || hb.GetHoldings()[0].GetRetiredMwh() != 3 {
		t.Errorf("b's holdings %v, %v: want 2 MWh owned and 3 retired", hb, err)
	}
}
