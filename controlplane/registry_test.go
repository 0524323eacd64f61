package controlplane_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/gridmesh/gridmesh/controlplane/registration"
	xdstest "github.com/gridmesh/gridmesh/internal/testutil/xds"
)

// rawCall sends one request to meshd's HTTP API and returns the status and
// the "error" of the answer (or its body).
func rawCall(ctx context.Context, t *testing.T, method, u, contentType string, body io.Reader) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(data, &e) == nil && e.Error != "" {
		return resp.StatusCode, e.Error
	}
	return resp.StatusCode, string(data)
}

const (
	notReg    = "body is not a registration: "
	theFields = "the fields are service, version, address, listen_address, spiffe_id, weight, ttl (spelt exactly so)"
	printable = "registration values are printable ASCII"
	weightIs  = "weight is a whole number from 0 to 4294967295, relative to the service's other endpoints"
	oneObject = `send one object like {"service": "trading", "address": "10.0.0.7:8443"}`
)

// TestRegistrationAPIRefusesMalformedBodies: a registration body is one
// JSON object in UTF-8, its fields spelt exactly and given once, of their
// type, printable ASCII, and nothing after it; the content type is JSON.
// Each refusal names the field.
func TestRegistrationAPIRefusesMalformedBodies(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := xdstest.StartMeshd(t, "", nil)
	u := "http://" + m.HTTPAddr + "/v1/endpoints"
	const ok = `"service": "a", "address": "127.0.0.1:9000"`
	const jsonCT = "application/json"
	tests := []struct {
		name, contentType, body string
		wantStatus              int
		wantErr                 string
	}{
		{"unknown field", jsonCT, `{` + ok + `, "colour": "red"}`, 400, notReg + `unknown field "colour"; ` + theFields},
		{"field in capitals", jsonCT, `{"SERVICE": "a", "address": "127.0.0.1:9000"}`, 400, notReg + `unknown field "SERVICE" (did you mean "service"?); ` + theFields},
		{"misspelt field", jsonCT, `{"service": "a", "adress": "127.0.0.1:9000"}`, 400, notReg + `unknown field "adress" (did you mean "address"?); ` + theFields},
		{"field twice", jsonCT, `{"service": "a", "address": "127.0.0.1:9000", "service": "b"}`, 400, notReg + "field service appears twice; send it once"},
		{"second object", jsonCT, `{` + ok + `} {"service": "b"}`, 400, notReg + "data after the JSON object (at byte 46); send exactly one object"},
		{"trailing garbage", jsonCT, `{` + ok + `}x`, 400, notReg + "data after the JSON object (at byte 45); send exactly one object"},
		{"array", jsonCT, `[{` + ok + `}]`, 400, notReg + "an array is not a JSON object; " + oneObject},
		{"null", jsonCT, `null`, 400, notReg + "null is not a JSON object; " + oneObject},
		{"empty body", jsonCT, ``, 400, notReg + `the body is empty; send one JSON object like {"service": "trading", "address": "10.0.0.7:8443"}`},
		{"cut off", jsonCT, `{"service": "a",`, 400, notReg + `the JSON object ends early; send one complete object like {"service": "trading", "address": "10.0.0.7:8443"}`},
		{"not JSON", jsonCT, `{"service" "a"}`, 400, notReg + "not valid JSON at byte 11: invalid character '\"' after object key"},
		{"invalid UTF-8", jsonCT, "{\"service\": \"a\xff\", \"address\": \"127.0.0.1:9000\"}", 400, notReg + "byte 14 is not UTF-8; send JSON in UTF-8"},
		{"overlong UTF-8 slash", jsonCT, "{\"service\": \"a\xc0\xafb\", \"address\": \"127.0.0.1:9000\"}", 400, notReg + "byte 14 is not UTF-8; send JSON in UTF-8"},
		{"NUL in service", jsonCT, `{"service": "a\u0000b", "address": "127.0.0.1:9000"}`, 400, notReg + `field service: "a\x00b" holds a NUL byte at byte 1; ` + printable},
		{"NUL in address", jsonCT, `{"service": "a", "address": "127.0.0.1\u0000:9000"}`, 400, notReg + `field address: "127.0.0.1\x00:9000" holds a NUL byte at byte 9; ` + printable},
		{"escape in SPIFFE ID", jsonCT, `{` + ok + `, "spiffe_id": "spiffe://td/a\u001b[2J"}`, 400, notReg + `field spiffe_id: "spiffe://td/a\x1b[2J" holds a control character (0x1b) at byte 13; ` + printable},
		{"lone surrogate", jsonCT, `{` + ok + `, "version": "v\ud800"}`, 400, notReg + `field version: "v�" holds a byte that is not ASCII (0xef) at byte 1; ` + printable},
		{"non-ASCII name", jsonCT, `{"service": "trádìng", "address": "127.0.0.1:9000"}`, 400, notReg + `field service: "trádìng" holds a byte that is not ASCII (0xc3) at byte 2; ` + printable},
		{"newline in listen address", jsonCT, `{` + ok + `, "listen_address": "0.0.0.0:9000\n"}`, 400, notReg + `field listen_address: "0.0.0.0:9000\n" holds a control character (0x0a) at byte 12; ` + printable},
		{"null field", jsonCT, `{` + ok + `, "version": null}`, 400, notReg + "field version: null; leave the field out instead"},
		{"object for a name", jsonCT, `{"service": {"name": "a"}, "address": "127.0.0.1:9000"}`, 400, notReg + "field service: an object where a single value is expected"},
		{"number for a name", jsonCT, `{"service": 5, "address": "127.0.0.1:9000"}`, 400, notReg + "field service: the number 5 where a string is expected"},
		{"negative weight", jsonCT, `{` + ok + `, "weight": -5}`, 400, notReg + "field weight: -5 is negative; " + weightIs},
		{"quoted weight", jsonCT, `{` + ok + `, "weight": "5"}`, 400, notReg + `field weight: a string "5" where a number is expected; ` + weightIs + " (0: the default, 1)"},
		{"fractional weight", jsonCT, `{` + ok + `, "weight": 1.5}`, 400, notReg + "field weight: 1.5 is not a whole number; " + weightIs},
		{"weight over uint32", jsonCT, `{` + ok + `, "weight": 4294967296}`, 400, notReg + "field weight: 4294967296 is too large; " + weightIs},
		{"number for a TTL", jsonCT, `{` + ok + `, "ttl": 10}`, 400, notReg + "field ttl: the number 10 where a string is expected"},
		{"TTL not a duration", jsonCT, `{` + ok + `, "ttl": "soon"}`, 400, notReg + `field ttl: "soon" is not a duration; write one like "10s"`},
		{"negative TTL", jsonCT, `{` + ok + `, "ttl": "-1s"}`, 400, notReg + `field ttl: "-1s" is negative; write a duration like "10s", or leave ttl out for none`},
		{"no address", jsonCT, `{"service": "a"}`, 400, notReg + "field address is missing; a registration names its service and address"},
		{"no content type", "", `{` + ok + `}`, 415, "no Content-Type; send the registration as Content-Type: application/json"},
		{"text content type", "text/plain", `{` + ok + `}`, 415, `Content-Type "text/plain": send the registration as application/json`},
		{"form content type", "application/x-www-form-urlencoded", `{` + ok + `}`, 415, `Content-Type "application/x-www-form-urlencoded": send the registration as application/json`},
		{"other charset", "application/json; charset=latin1", `{` + ok + `}`, 415, `Content-Type charset "latin1": send the registration in utf-8`},
		{"body over 64 KiB", jsonCT, `{` + ok + `, "spiffe_id": "spiffe://td/` + strings.Repeat("a", 64<<10) + `"}`, 413, "body is over the limit of 65536 bytes (64 KiB, registration.MaxBodySize) for one registration; the limit falls in field spiffe_id"},
		{"body over 64 KiB of whitespace", jsonCT, `{` + ok + strings.Repeat(" ", 64<<10) + `}`, 413, "body is over the limit of 65536 bytes (64 KiB, registration.MaxBodySize) for one registration"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, msg := rawCall(ctx, t, http.MethodPut, u, tt.contentType, strings.NewReader(tt.body))
			if diff := cmp.Diff([2]any{tt.wantStatus, tt.wantErr}, [2]any{status, msg}); diff != "" {
				t.Errorf("status and error (-want +got):\n%s", diff)
			}
		})
	}
	// None of them registered anything; a well-formed body still does,
	// with a charset and whitespace around it.
	if status, msg := rawCall(ctx, t, http.MethodPut, u, "application/json; charset=UTF-8", strings.NewReader("\n {"+ok+`, "weight": 3, "ttl": "1m"} `+"\n")); status != http.StatusNoContent {
		t.Fatalf("good registration: %d %s", status, msg)
	}
	list, err := registration.NewClient(m.HTTPAddr).List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []registration.Registration{{Service: "a", Address: "127.0.0.1:9000", Weight: 3, TTL: registration.Duration(time.Minute)}}
	if diff := cmp.Diff(want, list); diff != "" {
		t.Errorf("registered (-want +got):\n%s", diff)
	}
}

// TestRegistrationBodyLimitAndBoundedEcho: a 16 MiB service name is refused
// at the body limit with a short error naming it, and values under the
// limit are quoted cut, so each error stays a few hundred bytes and names
// the field.
func TestRegistrationBodyLimitAndBoundedEcho(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := xdstest.StartMeshd(t, "", nil)
	u := "http://" + m.HTTPAddr + "/v1/endpoints"
	const maxLen = 300
	long := strings.Repeat("a", 60<<10) // under the 64 KiB limit with the JSON around it
	tests := []struct {
		name       string
		method     string
		url        string
		body       string
		wantStatus int
		wantIn     string
	}{
		{"16 MiB service name", http.MethodPut, u, `{"service": "` + strings.Repeat("a", 16<<20) + `", "address": "127.0.0.1:9000"}`,
			413, "over the limit of 65536 bytes (64 KiB, registration.MaxBodySize) for one registration; the limit falls in field service"},
		{"60 KiB service name", http.MethodPut, u, `{"service": "` + long + `", "address": "127.0.0.1:9000"}`,
			400, `service "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"… (61440 bytes, cut) is too long; names are at most 253 bytes`},
		{"60 KiB invalid service name", http.MethodPut, u, `{"service": "A` + long + `", "address": "127.0.0.1:9000"}`,
			400, "service \"Aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"… (61441 bytes, cut) is too long"},
		{"60 KiB address", http.MethodPut, u, `{"service": "a", "address": "` + long + `"}`,
			400, "address \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"… (61440 bytes, cut) is not host:port"},
		{"60 KiB host", http.MethodPut, u, `{"service": "a", "address": "` + long + `:80"}`,
			400, "address \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"… (61443 bytes, cut) has a host of 61440 bytes; a host is an IP address or a DNS name of at most 253 bytes"},
		{"60 KiB SPIFFE ID", http.MethodPut, u, `{"service": "a", "address": "127.0.0.1:9000", "spiffe_id": "` + long + `"}`,
			400, "spiffe_id \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"… (61440 bytes, cut) is not a SPIFFE ID"},
		{"60 KiB TTL", http.MethodPut, u, `{"service": "a", "address": "127.0.0.1:9000", "ttl": "` + long + `"}`,
			400, "field ttl: \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"… (61440 bytes, cut) is not a duration"},
		{"60 KiB field name", http.MethodPut, u, `{"` + long + `": 1}`,
			400, "unknown field \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"… (61440 bytes, cut); the fields are"},
		{"60 KiB weight", http.MethodPut, u, `{"service": "a", "address": "127.0.0.1:9000", "weight": 1` + strings.Repeat("0", 60<<10) + `}`,
			400, "(61441 bytes, cut) is too large"},
		{"60 KiB of NULs", http.MethodPut, u, `{"service": "a", "address": "127.0.0.1:9000", "version": "` + strings.Repeat(`\u0000`, 10<<10) + `"}`,
			400, "field version: \"\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\"… (10240 bytes, cut) holds a NUL byte at byte 0"},
		{"60 KiB service to deregister", http.MethodDelete, u + "?" + url.Values{"service": {long}, "address": {long}}.Encode(), "",
			404, "nothing registered for service \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"… (61440 bytes, cut) at"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, msg := rawCall(ctx, t, tt.method, tt.url, "application/json", strings.NewReader(tt.body))
			if status != tt.wantStatus {
				t.Errorf("status %d, want %d", status, tt.wantStatus)
			}
			if len(msg) > maxLen {
				t.Errorf("error is %d bytes, want at most %d: %.400s", len(msg), maxLen, msg)
			}
			if !strings.Contains(msg, tt.wantIn) {
				t.Errorf("error %.400q does not say %q", msg, tt.wantIn)
			}
		})
	}
	// The client refuses a registration over the limit before sending it.
	err := registration.NewClient(m.HTTPAddr).Register(ctx, registration.Registration{Service: strings.Repeat("a", 16<<20), Address: "127.0.0.1:9000"})
	if err == nil || len(err.Error()) > maxLen || !strings.Contains(err.Error(), "over meshd's limit of 65536 (64 KiB, MaxBodySize)") {
		t.Errorf("Register of 16 MiB: %.400v", err)
	}
	var re *registration.Error
	if errors.As(err, &re) {
		t.Errorf("Register of 16 MiB reached meshd: %v", re)
	}
}
