package controlplane_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/gridmesh/gridmesh/controlplane"
)

// parseProblems parses yaml and returns the problems of the *ConfigError
// it must fail with.
func parseProblems(t *testing.T, yaml string) []controlplane.Problem {
	t.Helper()
	_, err := controlplane.ParseConfig("meshd.yaml", []byte(yaml))
	var ce *controlplane.ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("ParseConfig: %v, want a *ConfigError", err)
	}
	return ce.Problems
}

// problemCase is a config and the problems it must be refused with.
type problemCase struct {
	name string
	yaml string
	want []controlplane.Problem
}

func runProblemCases(t *testing.T, cases []problemCase) {
	t.Helper()
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, parseProblems(t, tt.yaml)); diff != "" {
				t.Errorf("problems (-want +got):\n%s", diff)
			}
		})
	}
}

const (
	emptyFileMsg   = `the file is empty (or holds only comments); meshd does not read that as "no services": to remove every service, write services: []`
	noNewlineMsg   = "the file does not end with a newline, so it may be cut off mid-line (a half-written file); end it with a newline"
	noServicesMsg  = "missing; a config lists its services (a file cut off before them looks like this): to remove every service, write services: []"
	secondDocMsg   = "a second YAML document starts here; a config is one document: remove the '---' line, or merge the documents"
	unclosedQuote  = "not valid YAML: a quoted string opened on this line is never closed (yaml: found unexpected end of stream)"
	notInMapping   = "not valid YAML: this line does not fit the mapping it is in: check its indentation (the keys of one mapping line up) and that no list item ('- ') sits among the keys (yaml: did not find expected key)"
	notInList      = "not valid YAML: this line does not fit the list it is in: check its indentation (the items of one list line up, each starting with '- ') (yaml: did not find expected '-' indicator)"
	tabIndent      = "not valid YAML: a tab character in the indentation; YAML indents with spaces only (yaml: found a tab character that violates indentation)"
	weightTakes    = "weight takes a whole number from 0 to 4294967295, relative to the other legs' weights"
	listOfAnything = "a list ([a, b], or one '- ' item a line)"
)

// TestParseConfigRefusesHalfWrittenFiles: a file that is empty, or cut off
// where a writer stops (mid-line, after a key, before services, inside a
// quote or a flow list), or two documents, is refused rather than read as
// a config with fewer services; removing every service takes
// "services: []".
func TestParseConfigRefusesHalfWrittenFiles(t *testing.T) {
	runProblemCases(t, []problemCase{
		{"empty", "", []controlplane.Problem{{Line: 1, Message: emptyFileMsg}}},
		{"only whitespace", "  \n\n   \n", []controlplane.Problem{{Line: 1, Message: emptyFileMsg}}},
		{"only comments", "# services:\n#   - name: trading\n", []controlplane.Problem{{Line: 1, Message: emptyFileMsg}}},
		{"only a document marker", "---\n", []controlplane.Problem{{Line: 1, Message: emptyFileMsg}}},
		{"null document", "~\n", []controlplane.Problem{{Line: 1, Message: emptyFileMsg}}},
		{"cut mid-value", "services:\n  - name: trading\n    port: 84", []controlplane.Problem{{Line: 3, Message: noNewlineMsg}}},
		{"cut mid-key", "services:\n  - name: trading\n    po", []controlplane.Problem{
			{Line: 3, Message: noNewlineMsg},
			{Line: 3, Message: "not valid YAML: a key without ':'; write key: value (yaml: could not find expected ':')"},
		}},
		{"cut after a key", "services:\n  - name: trading\n    routes:\n", []controlplane.Problem{{Line: 3, Field: "services[0].routes",
			Message: "has no value (a file cut off after this key looks like this); write " + listOfAnything + ", [] for an empty list, or remove the key"}}},
		{"cut after services", "mtls: true\nservices:\n", []controlplane.Problem{{Line: 2, Field: "services",
			Message: "has no value (a file cut off after this key looks like this); write " + listOfAnything + " of services, each a mapping starting with '- name: ', [] for an empty list, or remove the key"}}},
		{"cut after a list dash", "services:\n  - name: a\n  -\n", []controlplane.Problem{{Line: 3, Field: "services[1]",
			Message: "an empty list item; remove the '-' or give it a value (services, each a mapping starting with '- name: ')"}}},
		{"cut before services", "mtls: true\n", []controlplane.Problem{{Line: 1, Field: "services", Message: noServicesMsg}}},
		{"cut inside a quote", "services:\n  - name: trading\n    spiffe_id: \"spiffe://td/tra\n", []controlplane.Problem{{Line: 3, Message: unclosedQuote}}},
		{"cut inside a flow list", "services:\n  - name: trading\n    endpoints: [10.0.0.1:80,\n", []controlplane.Problem{{Line: 3,
			Message: "not valid YAML: did not find expected node content"}}},
		{"two documents", "services: []\n---\nservices:\n  - name: a\n", []controlplane.Problem{{Line: 2, Message: secondDocMsg}}},
		{"an empty second document", "services: []\n---\n", []controlplane.Problem{{Line: 2, Message: secondDocMsg}}},
	})
}

// TestParseConfigRefusesEveryMidLineCut cuts a full config at every byte
// that is not the end of a line: each cut, which is what a writer that was
// stopped half-way leaves, must be refused. (A cut at the end of a line
// can be a valid, shorter config; that is what WatchConfigFile's settling
// and atomic renames are for.)
func TestParseConfigRefusesEveryMidLineCut(t *testing.T) {
	if _, err := controlplane.ParseConfig("meshd.yaml", []byte(fullConfig)); err != nil {
		t.Fatal(err)
	}
	cuts := 0
	for i := 1; i < len(fullConfig); i++ {
		if fullConfig[i-1] == '\n' {
			continue
		}
		cuts++
		if cfg, err := controlplane.ParseConfig("meshd.yaml", []byte(fullConfig[:i])); err == nil {
			t.Errorf("cut after byte %d (%q) accepted: %d services", i, fullConfig[max(0, i-20):i], len(cfg.Services))
		}
	}
	if cuts < 500 {
		t.Errorf("only %d cuts tried", cuts)
	}
}

// TestParseConfigRemovesServicesOnlyWhenSaid: "services: []" is the way to
// a config without services.
func TestParseConfigRemovesServicesOnlyWhenSaid(t *testing.T) {
	for _, yaml := range []string{"services: []\n", "mtls: true\nservices: [] # drain the mesh\n", "---\nservices: []\n...\n"} {
		cfg, err := controlplane.ParseConfig("meshd.yaml", []byte(yaml))
		if err != nil {
			t.Errorf("ParseConfig(%q): %v", yaml, err)
			continue
		}
		if len(cfg.Services) != 0 {
			t.Errorf("ParseConfig(%q): %d services, want 0", yaml, len(cfg.Services))
		}
	}
}

// TestConfigSizeLimitAndBoundedEcho: files over MaxConfigSize are refused
// naming the limit, and no error quotes a long value in full however big
// the value (the 16 MiB service name used to be printed twice).
func TestConfigSizeLimitAndBoundedEcho(t *testing.T) {
	const maxLen = 400 // "a few hundred bytes"
	huge := strings.Repeat("a", 16<<20)
	big := strings.Repeat("x", controlplane.MaxConfigSize-200) // under the limit with the YAML around it
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name      string
		load      func() error
		wantField string // a problem of this field, or "" for a size refusal
		wantIn    string
	}{
		{"16 MiB service name in a file", func() error {
			_, err := controlplane.LoadConfigFile(write("huge.yaml", "services:\n  - name: "+huge+"\n"))
			return err
		}, "services[0].name", "line 2: services[0].name: the file is 16777237 bytes, over the limit of 4194304 bytes (4 MiB, controlplane.MaxConfigSize) (the limit falls in this value)"},
		{"16 MiB service name parsed", func() error {
			_, err := controlplane.ParseConfig("meshd.yaml", []byte("services:\n  - name: "+huge+"\n"))
			return err
		}, "services[0].name", "line 2: services[0].name: the file is 16777237 bytes, over the limit of 4194304 bytes"},
		{"16 MiB endpoint deep in a file", func() error {
			_, err := controlplane.ParseConfig("meshd.yaml", []byte("mtls: true\nservices:\n  - name: a\n  - name: b\n    versions:\n      - name: v1\n        endpoints:\n          - 10.0.0.1:80\n          - "+huge+"\n"))
			return err
		}, "services[1].versions[0].endpoints[1]", "line 9: services[1].versions[0].endpoints[1]: the file is"},
		{"16 MiB comment", func() error {
			_, err := controlplane.ParseConfig("meshd.yaml", []byte("services: []\n# "+huge+"\n"))
			return err
		}, "", "line 2: the file is 16777232 bytes, over the limit"},
		{"4 MiB service name", func() error {
			_, err := controlplane.LoadConfigFile(write("big.yaml", "services:\n  - name: "+big+"\n"))
			return err
		}, "services[0].name", `"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"… (4194104 bytes, cut) is too long; names are at most 253 bytes`},
		{"the same long name twice", func() error {
			n := big[:1<<20]
			_, err := controlplane.ParseConfig("meshd.yaml", []byte("services:\n  - name: "+n+"\n  - name: "+n+"\n"))
			return err
		}, "services[1].name", "(1048576 bytes, cut) is too long"},
		{"long unknown key", func() error {
			// yaml.v3 takes keys of up to 1024 bytes.
			_, err := controlplane.ParseConfig("meshd.yaml", []byte("services:\n  - name: a\n    "+big[:1000]+": 1\n"))
			return err
		}, "services[0]." + big[:48] + "…", `… (1000 bytes, cut); the keys here are`},
		{"long number", func() error {
			_, err := controlplane.ParseConfig("meshd.yaml", []byte("services:\n  - name: a\n    port: 1"+strings.Repeat("0", 1<<20)+"\n"))
			return err
		}, "services[0].port", "(1048577 bytes, cut) is too large; port takes a port number, 1-65535"},
		{"long regex", func() error {
			_, err := controlplane.ParseConfig("meshd.yaml", []byte("services:\n  - name: a\n    routes:\n      - match: {headers: [{name: x, regex: \"("+big[:1<<20]+"\"}]}\n"))
			return err
		}, "services[0].routes[0].match.headers[0].regex", "is not an RE2 regular expression: missing closing ) at"},
		{"long duration", func() error {
			_, err := controlplane.ParseConfig("meshd.yaml", []byte("services:\n  - name: a\n    timeout: "+big[:1<<20]+"\n"))
			return err
		}, "services[0].timeout", "(1048576 bytes, cut) is not a duration"},
		{"long endpoint", func() error {
			_, err := controlplane.ParseConfig("meshd.yaml", []byte("services:\n  - name: a\n    endpoints: ["+big[:1<<20]+"]\n"))
			return err
		}, "services[0].endpoints[0]", "(1048576 bytes, cut) is not host:port"},
		{"non-ASCII value cut on a character boundary", func() error {
			_, err := controlplane.ParseConfig("meshd.yaml", []byte("services:\n  - name: "+strings.Repeat("é", 1000)+"\n"))
			return err
		}, "services[0].name", `"` + strings.Repeat("é", 24) + `"… (2000 bytes, cut)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.load()
			var ce *controlplane.ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("error %v, want a *ConfigError", err)
			}
			msg := err.Error()
			if len(msg) > maxLen {
				t.Errorf("error is %d bytes, want at most %d: %.600s", len(msg), maxLen, msg)
			}
			if !strings.Contains(msg, tt.wantIn) {
				t.Errorf("error %q does not say %q", msg, tt.wantIn)
			}
			if tt.wantField != "" {
				var fields []string
				for _, p := range ce.Problems {
					fields = append(fields, p.Field)
				}
				if !strings.Contains(strings.Join(fields, " "), tt.wantField) {
					t.Errorf("problems name fields %.200q, want %.200q", fields, tt.wantField)
				}
			}
		})
	}
}

// TestConfigErrorListsTenProblems: a file with thousands of problems gives
// an error of ten and a count.
func TestConfigErrorListsTenProblems(t *testing.T) {
	var b strings.Builder
	b.WriteString("services:\n")
	for i := range 5000 {
		fmt.Fprintf(&b, "  - name: S%d\n", i)
	}
	_, err := controlplane.ParseConfig("meshd.yaml", []byte(b.String()))
	var ce *controlplane.ConfigError
	if !errors.As(err, &ce) || len(ce.Problems) != 5000 {
		t.Fatalf("ParseConfig: %v, want 5000 problems", err)
	}
	if msg := err.Error(); !strings.HasSuffix(msg, "; and 4990 more problems") || len(msg) > 2000 {
		t.Errorf("error is %d bytes and ends %q", len(msg), msg[max(0, len(msg)-60):])
	}
}

// TestParseConfigErrorPositions: syntax errors and decode errors point at
// the line at fault. yaml.v3 reports several of them at the construct
// around the fault (one or more lines above, zero-based); ParseConfig
// finds the line again. Each case's want line is the line a person would
// fix.
func TestParseConfigErrorPositions(t *testing.T) {
	runProblemCases(t, []problemCase{
		{"unclosed double quote mid-file", "services:\n  - name: a\n  - name: \"b\n    lb: round_robin\n",
			[]controlplane.Problem{{Line: 3, Message: unclosedQuote}}},
		{"unclosed single quote", "services:\n  - name: a\n    spiffe_id: 'spiffe://td/a\n",
			[]controlplane.Problem{{Line: 3, Message: unclosedQuote}}},
		{"unclosed flow list", "services:\n  - name: a\n    endpoints: [10.0.0.1:80, 10.0.0.2:80\n    lb: round_robin\n",
			[]controlplane.Problem{{Line: 3, Message: "not valid YAML: a list opened with '[' on this line is not closed with ']' (yaml: did not find expected ',' or ']')"}}},
		{"unclosed flow mapping", "services:\n  - name: a\n  - {name: b, lb: ring_hash\n  - name: c\n",
			[]controlplane.Problem{{Line: 3, Message: "not valid YAML: a mapping opened with '{' on this line is not closed with '}' (yaml: did not find expected ',' or '}')"}}},
		{"key dedented by one", "services:\n  - name: a\n    lb: round_robin\n   port: 80\n",
			[]controlplane.Problem{{Line: 4, Message: notInList}}},
		{"key dedented deep in the file", "mtls: true\nservices:\n  - name: a\n    routes:\n      - name: r\n        match: {prefix: /a/}\n       timeout: 1s\n",
			[]controlplane.Problem{{Line: 7, Message: notInList}}},
		{"key dedented after two thousand lines", "services:\n" + strings.Repeat("  - name: a\n    lb: round_robin\n", 1000) + "   port: 80\n",
			[]controlplane.Problem{{Line: 2002, Message: notInList}}},
		{"key indented by one", "services:\n  - name: a\n     lb: round_robin\n",
			[]controlplane.Problem{{Line: 3, Message: "not valid YAML: a ': ' where no key can start: check the indentation, or quote a value that holds ': ' (yaml: mapping values are not allowed in this context)"}}},
		{"tab indenting a key", "services:\n  - name: a\n\tlb: round_robin\n",
			[]controlplane.Problem{{Line: 3, Message: tabIndent}}},
		{"tab after a tab-separated value", "services:\n  - name: a\n    port:\t80\n\t  lb: round_robin\n",
			[]controlplane.Problem{{Line: 4, Message: tabIndent}}},
		{"tab indenting a list item", "services:\n\t- name: a\n",
			[]controlplane.Problem{{Line: 2, Message: "not valid YAML: a tab character in the indentation; YAML indents with spaces only (yaml: found character that cannot start any token)"}}},
		{"mapping where a list is expected, then an item", "services:\n  name: a\n  - name: b\n",
			[]controlplane.Problem{{Line: 3, Message: notInMapping}}},
		{"list item among keys", "services:\n  - name: a\n    retry:\n      on: [unavailable]\n      - attempts: 2\n",
			[]controlplane.Problem{{Line: 5, Message: notInMapping}}},
		{"key without colon", "services:\n  - name: a\n    lb\n    port: 80\n",
			[]controlplane.Problem{{Line: 3, Message: "not valid YAML: a key without ':'; write key: value (yaml: could not find expected ':')"}}},
		{"NUL byte", "services:\n  - name: a\n  - name: b\x00c\n",
			[]controlplane.Problem{{Line: 3, Message: "not valid YAML: a control character (U+0000) at byte 33; remove it (yaml: control characters are not allowed)"}}},
		{"not UTF-8", "services:\n  - name: a\n  - name: b\n  - name: \xc0\xaf\n",
			[]controlplane.Problem{{Line: 4, Message: "not valid YAML: byte 44 is not UTF-8; save the file as UTF-8 (yaml: invalid length of a UTF-8 sequence)"}}},
		{"alias to no anchor", "services:\n  - name: a\n    retry: &r {attempts: 2}\n  - name: b\n    retry: *rr\n",
			[]controlplane.Problem{{Line: 5, Message: "not valid YAML: an alias (*name) to an anchor (&name) not defined before it (yaml: unknown anchor 'rr' referenced)"}}},
		{"duplicate key in a service", "services:\n  - name: a\n    lb: round_robin\n    port: 80\n    lb: ring_hash\n",
			[]controlplane.Problem{{Line: 5, Field: "services[0].lb", Message: "set twice (first at line 3); keep one"}}},
		{"duplicate top-level key", "services: []\nmtls: true\nservices:\n  - name: a\n",
			[]controlplane.Problem{{Line: 3, Field: "services", Message: "set twice (first at line 1); keep one"}}},
		{"second document", "services:\n  - name: a\n---\nservices: []\n",
			[]controlplane.Problem{{Line: 3, Message: secondDocMsg}}},
		{"mapping where a list is expected", "services:\n  name: a\n  lb: round_robin\n",
			[]controlplane.Problem{{Line: 2, Field: "services", Message: "a mapping where a list is expected; services takes " + listOfAnything + " of services, each a mapping starting with '- name: '"}}},
		{"unknown key below a long block", "services:\n  - name: a\n    routes:\n      - name: r1\n      - name: r2\n    retyr: {attempts: 2}\n",
			[]controlplane.Problem{{Line: 6, Field: "services[0].retyr", Message: `unknown key "retyr" (did you mean "retry"?); the keys here are name, port, spiffe_id, lb, hash_header, endpoints, versions, routes, timeout, retry, circuit_breaker, outlier_detection, authorization`}}},
	})
}

// TestParseConfigTypeErrors: a value of the wrong type names the field
// path, its line, what was found and what the field takes.
func TestParseConfigTypeErrors(t *testing.T) {
	split := func(leg string) string {
		return "services:\n  - name: a\n    versions: [{name: v1}, {name: v2}]\n    routes:\n      - split:\n          - {version: v2, weight: 1}\n          - " + leg + "\n"
	}
	const legField = "services[0].routes[0].split[1]"
	runProblemCases(t, []problemCase{
		{"negative weight", split("{version: v1, weight: -5}"),
			[]controlplane.Problem{{Line: 7, Field: legField + ".weight", Message: "-5 is negative; " + weightTakes}}},
		{"word for a weight", split("{version: v1, weight: ten}"),
			[]controlplane.Problem{{Line: 7, Field: legField + ".weight", Message: `"ten" is not a number; ` + weightTakes}}},
		{"quoted weight", split(`{version: v1, weight: "10"}`),
			[]controlplane.Problem{{Line: 7, Field: legField + ".weight", Message: `"10" is a string, not a number (remove the quotes); ` + weightTakes}}},
		{"fractional weight", split("{version: v1, weight: 2.5}"),
			[]controlplane.Problem{{Line: 7, Field: legField + ".weight", Message: "2.5 is not a whole number; " + weightTakes}}},
		{"weight over uint32", split("{version: v1, weight: 4294967296}"),
			[]controlplane.Problem{{Line: 7, Field: legField + ".weight", Message: "4294967296 is too large; " + weightTakes}}},
		{"weight left out", split("{version: v1}"),
			[]controlplane.Problem{{Line: 7, Field: legField + ".weight", Message: "missing; " + weightTakes}}},
		{"bool typo", "mtls: ture\nservices: []\n",
			[]controlplane.Problem{{Line: 1, Field: "mtls", Message: `"ture" is not true or false; mtls takes true or false`}}},
		{"yes for a bool", "mtls: yes\nservices: []\n",
			[]controlplane.Problem{{Line: 1, Field: "mtls", Message: `"yes" is not true or false; mtls takes true or false`}}},
		{"list where a mapping is expected", "services:\n  - name: a\n    retry: [unavailable]\n",
			[]controlplane.Problem{{Line: 3, Field: "services[0].retry", Message: "a list where a mapping is expected; retry takes a mapping with the keys on, attempts, base_interval, max_interval"}}},
		{"word where a mapping is expected", "services:\n  - name: a\n    circuit_breaker: on\n",
			[]controlplane.Problem{{Line: 3, Field: "services[0].circuit_breaker", Message: `"on" where a mapping is expected; circuit_breaker takes a mapping with the keys max_requests`}}},
		{"list where one value is expected", "services:\n  - name: a\n    lb: [round_robin]\n",
			[]controlplane.Problem{{Line: 3, Field: "services[0].lb", Message: "a list where a single value is expected; lb takes round_robin, least_request or ring_hash"}}},
		{"mapping as a list item", "services:\n  - name: a\n    retry: {on: [unavailable, {code: 14}]}\n",
			[]controlplane.Problem{{Line: 3, Field: "services[0].retry.on[1]", Message: "a mapping where a single value is expected; each item of on takes unavailable, cancelled, deadline-exceeded, internal or resource-exhausted"}}},
		{"string where a list is expected", "services:\n  - name: a\n    endpoints: 10.0.0.1:80\n",
			[]controlplane.Problem{{Line: 3, Field: "services[0].endpoints", Message: `"10.0.0.1:80" where a list is expected; endpoints takes ` + listOfAnything + " of addresses, host:port"}}},
		{"duration without a unit", "services:\n  - name: a\n    timeout: 30\n",
			[]controlplane.Problem{{Line: 3, Field: "services[0].timeout", Message: "30 has no unit; timeout takes a duration with a unit, like 250ms or 2s"}}},
		{"bad duration", "services:\n  - name: a\n    retry: {base_interval: 10 ms}\n",
			[]controlplane.Problem{{Line: 3, Field: "services[0].retry.base_interval", Message: `"10 ms" is not a duration; base_interval takes a duration with a unit, like 250ms or 2s`}}},
		{"NaN percent", "services:\n  - name: a\n    routes:\n      - fault:\n          abort: {code: UNAVAILABLE, percent: .nan}\n",
			[]controlplane.Problem{{Line: 5, Field: "services[0].routes[0].fault.abort.percent", Message: ".nan is not a finite number; percent takes a number above 0 and at most 100"}}},
		{"negative port", "services:\n  - name: a\n    port: -80\n",
			[]controlplane.Problem{{Line: 3, Field: "services[0].port", Message: "-80 is negative; port takes a port number, 1-65535"}}},
		{"merge key", "services:\n  - name: a\n    retry: &r {attempts: 2}\n  - name: b\n    <<: {retry: *r}\n",
			[]controlplane.Problem{{Line: 5, Field: "services[1]", Message: "merge keys (<<) are not supported; write the keys out"}}},
		{"several at once, in line order", "mtls: 1\nservices:\n  - name: a\n    port: x\n    versions: [{name: v1, endpoints: {a: b}}]\n",
			[]controlplane.Problem{
				{Line: 1, Field: "mtls", Message: "1 is not true or false; mtls takes true or false"},
				{Line: 4, Field: "services[0].port", Message: `"x" is not a number; port takes a port number, 1-65535`},
				{Line: 5, Field: "services[0].versions[0].endpoints", Message: "a mapping where a list is expected; endpoints takes " + listOfAnything + " of addresses, host:port"},
			}},
	})
}

// TestParseConfigAliases: aliases decode as the value they name, and a
// file of nested aliases cannot make decoding explode.
func TestParseConfigAliases(t *testing.T) {
	cfg, err := controlplane.ParseConfig("meshd.yaml", []byte("services:\n  - name: a\n    retry: &r {attempts: 3}\n  - name: b\n    retry: *r\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Services[1].Retry; got == nil || got.Attempts != 3 {
		t.Errorf("services[1].retry = %+v, want attempts 3", got)
	}
	// A thousand services, each a hundred versions, each a hundred
	// endpoints, from a file of about 1,300 values: 10^7 to decode without
	// the bound.
	var b strings.Builder
	b.WriteString("services:\n  - &s\n    name: a\n    versions:\n      - &v {name: v1, endpoints: [")
	for i := range 100 {
		fmt.Fprintf(&b, "\"10.0.0.1:%d\", ", i+1)
	}
	b.WriteString("]}\n")
	b.WriteString(strings.Repeat("      - *v\n", 99))
	b.WriteString(strings.Repeat("  - *s\n", 999))
	_, err = controlplane.ParseConfig("meshd.yaml", []byte(b.String()))
	var ce *controlplane.ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("ParseConfig: %v, want a *ConfigError", err)
	}
	if len(ce.Problems) > 1000 || !strings.Contains(err.Error(), "through aliases") {
		t.Errorf("%d problems: %.300s", len(ce.Problems), err)
	}
}
