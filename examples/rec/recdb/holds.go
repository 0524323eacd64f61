package recdb

import (
	"context"
	"database/sql"

	"github.com/gridmesh/gridmesh/examples/rec/recpb"
)

// ListHolds lists the unreleased holds of a holds table (hold_id, the owner
// column named owner, at_ms, released) placed before req's time, oldest
// first, at most req's limit (default 100, at most 1,000).
func ListHolds(ctx context.Context, db *sql.DB, owner string, req *recpb.ListHoldsRequest) (*recpb.ListHoldsReply, error) {
	limit := req.GetLimit()
	if limit <= 0 || limit > 1000 {
		limit = 100
	}
	// owner is a column name from the caller's code, never from a request.
	rows, err := db.QueryContext(ctx, `SELECT hold_id, `+owner+`, at_ms FROM holds WHERE released = 0 AND at_ms < ? ORDER BY at_ms LIMIT ?`, req.GetPlacedBeforeUnixMs(), limit)
	if err != nil {
		return nil, StoreErr(err)
	}
	defer rows.Close()
	reply := &recpb.ListHoldsReply{}
	for rows.Next() {
		h := &recpb.HoldInfo{}
		if err := rows.Scan(&h.HoldId, &h.Owner, &h.PlacedUnixMs); err != nil {
			return nil, StoreErr(err)
		}
		reply.Holds = append(reply.Holds, h)
	}
	return reply, StoreErr(rows.Err())
}
