package recdb

import (
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/gridmesh/gridmesh/examples/rec/recpb"
)

// MarketKey is a market's key, "solar:2024": the ring-hash key that sends
// a market's orders to one trading instance.
func MarketKey(m *recpb.Market) string {
	return m.GetEnergySource() + ":" + strconv.Itoa(int(m.GetVintage()))
}

// ParseMarket parses a MarketKey.
func ParseMarket(key string) (*recpb.Market, error) {
	src, v, ok := strings.Cut(key, ":")
	vintage, err := strconv.Atoi(v)
	if !ok || err != nil || src == "" {
		return nil, fmt.Errorf("market %q: want source:vintage, e.g. solar:2024", key)
	}
	return &recpb.Market{EnergySource: src, Vintage: int32(vintage)}, nil
}

// CheckMarket returns INVALID_ARGUMENT unless m names a market.
func CheckMarket(m *recpb.Market) error {
	if m.GetEnergySource() == "" || len(m.GetEnergySource()) > 32 || m.GetVintage() < 1990 || m.GetVintage() > 2100 {
		return status.Errorf(codes.InvalidArgument, "market %q: want an energy source (1-32 characters) and a vintage year 1990-2100", MarketKey(m))
	}
	return nil
}

// CheckID returns INVALID_ARGUMENT unless id is a usable identifier.
func CheckID(field, id string) error {
	if id == "" || len(id) > 128 {
		return status.Errorf(codes.InvalidArgument, "%s %q: want 1-128 characters", field, id)
	}
	return nil
}

// StoreErr turns a failed transaction into UNAVAILABLE: it rolled back, so
// nothing was committed and a retry is safe. gRPC status errors (the
// handler's own decisions) pass through.
func StoreErr(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codes.Unavailable, "storage: "+err.Error())
}
