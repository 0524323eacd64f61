package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/gridmesh/gridmesh/internal/admin"
	"github.com/gridmesh/gridmesh/internal/meshtel"
)

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func table(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0) }

// dash shows "-" for empty cells, so columns stay readable.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// in says how far t is from now, "in 59m" or "3s ago".
func in(t, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := t.Sub(now).Round(time.Second)
	if d > 0 {
		return "in " + d.String()
	}
	return (-d).String() + " ago"
}

func (c *client) status(ctx context.Context, w io.Writer, asJSON bool) error {
	var st admin.Status
	if _, err := c.get(ctx, "/status", nil, &st); err != nil {
		return err
	}
	if asJSON {
		return writeJSON(w, st)
	}
	now := st.Process.Now
	fmt.Fprintf(w, "Process %d  %s  %s  up %s\n\n", st.Process.PID, st.Process.Program, st.Process.GoVersion,
		now.Sub(st.Process.Started).Round(time.Second))
	tw := table(w)
	fmt.Fprintln(tw, "COMPONENT\tNAME")
	for _, c := range st.Components {
		fmt.Fprintf(tw, "%s\t%s\n", c.Kind, c.Name)
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = table(w)
	fmt.Fprintln(tw, "IDENTITY\tEXPIRES\tSTATUS")
	for _, id := range st.Identities {
		state := "ok"
		if id.Error != "" {
			state = "error: " + id.Error
		} else if id.Expiry.Before(now) {
			state = "EXPIRED"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", id.SPIFFEID, in(id.Expiry, now), state)
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = table(w)
	fmt.Fprintln(tw, "TARGET\tSTATE\tBALANCER\tBREAKER\tENDPOINTS\tOBSERVED")
	for _, t := range st.Targets {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\n", t.Target, dash(t.State), dash(t.Balancer), dash(t.Breaker), len(t.Endpoints), len(t.Observed))
	}
	tw.Flush()
	refused := 0
	for _, u := range st.Config {
		if u.Status == "NACKED" {
			refused++
		}
	}
	fmt.Fprintf(w, "\n%d xDS resources (%d refused), %d unsupported fields, %d recent denials, %d recent events\n",
		len(st.Config), refused, len(st.Unsupported), len(st.Denials), len(st.Events))
	if n := len(st.Denials); n > 0 {
		d := st.Denials[n-1]
		fmt.Fprintf(w, "last denial: %s calling %s, %s (%s)\n", d.Caller, d.Method, d.Rule, in(d.Time, now))
	}
	return nil
}

func (c *client) identity(ctx context.Context, w io.Writer, asJSON bool) error {
	var ids []admin.Identity
	if _, err := c.get(ctx, "/identity", nil, &ids); err != nil {
		return err
	}
	if asJSON {
		return writeJSON(w, ids)
	}
	now := time.Now()
	for i, id := range ids {
		if i > 0 {
			fmt.Fprintln(w)
		}
		tw := table(w)
		fmt.Fprintf(tw, "SPIFFE ID\t%s\n", id.SPIFFEID)
		if id.Error != "" {
			fmt.Fprintf(tw, "ERROR\t%s\n", id.Error)
		}
		fmt.Fprintf(tw, "SERIAL\t%s\n", dash(id.Serial))
		fmt.Fprintf(tw, "ISSUER\t%s\n", dash(id.Issuer))
		fmt.Fprintf(tw, "NOT BEFORE\t%s\n", id.NotBefore.Format(time.RFC3339))
		fmt.Fprintf(tw, "EXPIRES\t%s (%s)\n", id.Expiry.Format(time.RFC3339), in(id.Expiry, now))
		tw.Flush()
		tw = table(w)
		fmt.Fprintln(tw, "  TRUST DOMAIN\tAUTHORITY\tNOT AFTER\tSHA-256")
		for _, b := range id.Bundles {
			for _, a := range b.Authorities {
				fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", b.TrustDomain, a.Subject, a.NotAfter.Format(time.RFC3339), short(a.SHA256))
			}
		}
		tw.Flush()
	}
	return nil
}

func short(h string) string {
	if len(h) > 16 {
		return h[:16] + "…"
	}
	return h
}

func (c *client) endpoints(ctx context.Context, w io.Writer, target string, asJSON bool) error {
	q := url.Values{}
	if target != "" {
		q.Set("target", target)
	}
	var ts []admin.Target
	if _, err := c.get(ctx, "/targets", q, &ts); err != nil {
		return err
	}
	if target != "" && len(ts) == 0 {
		return fmt.Errorf("no target %q in this process: `meshctl endpoints` lists the targets it dialed", target)
	}
	if asJSON {
		return writeJSON(w, ts)
	}
	now := time.Now()
	for i, t := range ts {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "%s  state %s  balancer %s  breaker %s  source %s\n", t.Target, dash(t.State), dash(t.Balancer), dash(t.Breaker), dash(t.Source))
		tw := table(w)
		fmt.Fprintln(tw, "  ENDPOINT\tCLUSTER\tIDENTITY\tSTATE\tWEIGHT\tEJECTED")
		for _, e := range t.Endpoints {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%d\t%t\n", e.Address, dash(e.Cluster), dash(e.Identity), dash(e.State), e.Weight, e.Ejected)
		}
		if len(t.Endpoints) == 0 {
			fmt.Fprintln(tw, "  (none reported by discovery)\t\t\t\t\t")
		}
		tw.Flush()
		tw = table(w)
		fmt.Fprintln(tw, "  CALLS REACHED\tIDENTITY\tLAST CALL\tLAST CODE")
		for _, e := range t.Observed {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", e.Address, dash(e.Identity), in(e.LastCall, now), dash(e.LastCode))
		}
		tw.Flush()
	}
	return nil
}

func (c *client) config(ctx context.Context, w io.Writer, asJSON bool) error {
	var cv admin.ConfigView
	if _, err := c.get(ctx, "/config", nil, &cv); err != nil {
		return err
	}
	if asJSON {
		return writeJSON(w, cv)
	}
	now := time.Now()
	tw := table(w)
	fmt.Fprintln(tw, "POLICY\tSCOPE\tNAME\tSOURCE\tDETAIL")
	for _, p := range cv.Policies {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", p.Kind, p.Scope, p.Name, p.Source, p.Detail)
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = table(w)
	fmt.Fprintln(tw, "CONFIG SOURCE\tSCOPE\tRESOURCE\tNAME\tVERSION\tSTATUS\tRECEIVED\tDETAIL")
	for _, u := range cv.Updates {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", u.Source, u.Scope, typeName(u.Resource), u.Name, dash(u.Version),
			u.Status, in(u.ReceivedAt, now), u.Detail)
	}
	if len(cv.Updates) == 0 {
		fmt.Fprintln(tw, "(no config received: code only)\t\t\t\t\t\t\t")
	}
	tw.Flush()
	fmt.Fprintln(w)
	tw = table(w)
	fmt.Fprintln(tw, "UNSUPPORTED\tSCOPE\tRESOURCE\tNAME\tFIELD")
	for _, u := range cv.Unsupported {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", u.Source, u.Scope, typeName(u.Resource), u.Name, u.Field)
	}
	if len(cv.Unsupported) == 0 {
		fmt.Fprintln(tw, "(none)\t\t\t\t")
	}
	tw.Flush()
	return nil
}

// Explanation is what `explain -o json` prints.
type Explanation struct {
	Target  string   `json:"target"`
	Summary []string `json:"summary"`
	// Changes are the latest config and state changes for the target (xDS
	// and discovery updates, breaker changes, ejections): what the calls
	// below were routed by.
	Changes []meshtel.Event `json:"changes"`
	Events  []meshtel.Event `json:"events"`
}

// changesShown is how many recent changes explain shows.
const changesShown = 8

func (c *client) explain(ctx context.Context, w io.Writer, target string, limit int, asJSON bool) error {
	var all []meshtel.Event
	if _, err := c.get(ctx, "/events", nil, &all); err != nil {
		return err
	}
	var evs, changes []meshtel.Event
	for _, e := range all {
		if e.Target != target && e.Method != target && e.Source != target && e.Peer != target {
			continue
		}
		if meshtel.IsChange(e.Kind) {
			changes = append(changes, e)
		} else {
			evs = append(evs, e)
		}
	}
	if limit > 0 && len(evs) > limit {
		evs = evs[len(evs)-limit:]
	}
	if len(changes) > changesShown {
		changes = changes[len(changes)-changesShown:]
	}
	ex := Explanation{Target: target, Summary: summarize(evs), Changes: changes, Events: evs}
	if ex.Events == nil {
		ex.Events = []meshtel.Event{}
	}
	if ex.Changes == nil {
		ex.Changes = []meshtel.Event{}
	}
	if asJSON {
		return writeJSON(w, ex)
	}
	if len(evs) == 0 && len(changes) == 0 {
		fmt.Fprintf(w, "no recent events for %s (calls are recorded while telemetry is on; see `meshctl status` for targets)\n", target)
		return nil
	}
	now := time.Now()
	if len(changes) > 0 {
		tw := table(w)
		fmt.Fprintln(tw, "WHEN\tCHANGE\tWHAT")
		for _, e := range changes {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", in(e.Time, now), e.Kind, why(e))
		}
		tw.Flush()
		fmt.Fprintln(w)
	}
	if len(evs) > 0 {
		tw := table(w)
		fmt.Fprintln(tw, "WHEN\tSIDE\tEVENT\tMETHOD\tWHY")
		for _, e := range evs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", in(e.Time, now), dash(e.Side), e.Kind, dash(e.Method), why(e))
		}
		tw.Flush()
		fmt.Fprintln(w)
	}
	for _, s := range ex.Summary {
		fmt.Fprintln(w, s)
	}
	return nil
}

// why is the one-line reason for an event.
func why(e meshtel.Event) string {
	switch e.Kind {
	case meshtel.EventCall:
		var b strings.Builder
		if e.Side == "client" {
			if e.Endpoint == "" {
				b.WriteString("no endpoint reached")
			} else {
				fmt.Fprintf(&b, "routed to %s (%s)", e.Endpoint, dash(e.Peer))
			}
		} else {
			fmt.Fprintf(&b, "from %s", dash(e.Source))
		}
		fmt.Fprintf(&b, ": %s in %s", e.Code, e.Duration.Round(time.Microsecond))
		if e.Detail != "" {
			fmt.Fprintf(&b, ": %s", e.Detail)
		}
		return b.String()
	case meshtel.EventDenied:
		return fmt.Sprintf("%s denied by %s", e.Source, e.Rule)
	case meshtel.EventRetry:
		return "retried: " + dash(e.Detail)
	case meshtel.EventHedge:
		return "hedged attempt"
	case meshtel.EventBudget:
		return "retry refused: retry budget spent"
	case meshtel.EventRejected:
		return "refused locally, not sent: " + dash(e.Detail)
	case meshtel.EventBreaker:
		return "circuit breaker " + e.Detail
	case meshtel.EventEjected:
		return fmt.Sprintf("endpoint %s ejected by outlier detection: %s", e.Endpoint, dash(e.Detail))
	case meshtel.EventUnejected:
		return fmt.Sprintf("endpoint %s returned from ejection", e.Endpoint)
	case meshtel.EventDiscovery:
		if e.Code == "error" {
			return "discovery failed (keeping last endpoints): " + e.Detail
		}
		return "discovery update: " + e.Detail
	case meshtel.EventXDS:
		if e.Code == "nack" {
			return fmt.Sprintf("xDS %s version %s refused (NACK), last accepted version stays: %s", typeName(e.Resource), e.Version, e.Detail)
		}
		return fmt.Sprintf("xDS %s version %s accepted", typeName(e.Resource), e.Version)
	case meshtel.EventUnsupported:
		return fmt.Sprintf("%s: field %s received but not acted on", e.Resource, e.Detail)
	default:
		return e.Detail
	}
}

// summarize counts what the events say: outcomes, where calls went, retries
// and denials by rule.
func summarize(evs []meshtel.Event) []string {
	var calls, ok, retries, denied int
	codes := map[string]int{}
	endpoints := map[string]int{}
	rules := map[string]int{}
	for _, e := range evs {
		switch e.Kind {
		case meshtel.EventCall:
			calls++
			if succeeded(e.Code) {
				ok++
			} else {
				codes[e.Code]++
			}
			if e.Side == "client" && e.Endpoint != "" {
				endpoints[e.Endpoint+" ("+dash(e.Peer)+")"]++
			}
		case meshtel.EventRetry:
			retries++
		case meshtel.EventDenied:
			denied++
			rules[e.Rule]++
		}
	}
	var out []string
	if calls > 0 {
		out = append(out, fmt.Sprintf("%d calls: %d OK%s", calls, ok, counts(codes, ", %d %s")))
	}
	if len(endpoints) > 0 {
		out = append(out, "routed to:"+counts(endpoints, "\n  %[2]s: %[1]d calls"))
	}
	if retries > 0 {
		out = append(out, fmt.Sprintf("%d retries", retries))
	}
	if denied > 0 {
		out = append(out, fmt.Sprintf("%d denied by authorization:%s", denied, counts(rules, "\n  %[2]s: %[1]d")))
	}
	return out
}

func counts(m map[string]int, format string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, format, m[k], k)
	}
	return b.String()
}

// succeeded says whether a call's code is a success: gRPC OK, or an HTTP
// 1xx-3xx status.
func succeeded(code string) bool {
	if code == "OK" {
		return true
	}
	return len(code) == 3 && code[0] >= '1' && code[0] <= '3' && code[1] >= '0' && code[1] <= '9' && code[2] >= '0' && code[2] <= '9'
}

// typeName shortens an xDS type URL to its message name: "Cluster".
func typeName(typeURL string) string {
	return typeURL[strings.LastIndex(typeURL, ".")+1:]
}
