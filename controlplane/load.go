package controlplane

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"gopkg.in/yaml.v3"
)

// MaxConfigSize is the largest config file meshd reads, 4 MiB: about a
// hundred times the largest config we have seen (a few thousand services
// with routes and policies). A larger file is refused before it is parsed,
// so a runaway generator or a wrong path (a log file, a binary) cannot make
// meshd hold gigabytes.
const MaxConfigSize = 4 << 20

// maxProblemsShown is how many problems ConfigError.Error lists; the rest
// are counted. Problems holds them all.
const maxProblemsShown = 10

// ConfigError says why a config was refused: every problem found, each with
// its line (when known), the field and what is allowed.
type ConfigError struct {
	// File is the file name, or "config" for configs not read from a file.
	File     string
	Problems []Problem
}

// Problem is one thing wrong in a config.
type Problem struct {
	// Line is the 1-based line in the file, or 0 when unknown.
	Line int
	// Field is the path of the offending field, like
	// "services[0].routes[1].split[0].weight".
	Field string
	// Message says what is wrong and what is allowed. Values from the
	// config are quoted cut to a few dozen bytes (see quoteValue), so a
	// message stays short whatever the file holds.
	Message string
}

func (p Problem) String() string {
	var b strings.Builder
	if p.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", p.Line)
	}
	if p.Field != "" {
		b.WriteString(p.Field + ": ")
	}
	b.WriteString(p.Message)
	return b.String()
}

// Error lists the first ten problems and counts the rest.
func (e *ConfigError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "controlplane: %s refused", e.File)
	for i, p := range e.Problems {
		if i == maxProblemsShown {
			fmt.Fprintf(&b, "; and %d more problems", len(e.Problems)-i)
			break
		}
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		b.WriteString(p.String())
	}
	return b.String()
}

// LoadConfigFile reads, parses and validates the YAML config at path. It
// reads at most MaxConfigSize bytes: a larger file is refused with a
// *ConfigError naming the limit. See ParseConfig for what else is refused.
func LoadConfigFile(path string) (*Config, error) {
	data, err := readConfigFile(path)
	if err != nil {
		return nil, err
	}
	return ParseConfig(path, data)
}

// readConfigFile reads path, refusing a file over MaxConfigSize with a
// *ConfigError without reading more than one byte past the limit.
func readConfigFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("controlplane: read config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxConfigSize+1))
	if err != nil {
		return nil, fmt.Errorf("controlplane: read config: %w", err)
	}
	if len(data) > MaxConfigSize {
		size := int64(-1)
		if fi, err := f.Stat(); err == nil {
			size = fi.Size()
		}
		return data, &ConfigError{File: path, Problems: []Problem{tooLarge(size, data[:MaxConfigSize])}}
	}
	return data, nil
}

// tooLarge is the problem of a file of size bytes (-1: unknown) over
// MaxConfigSize, placed at the line and field where the limit falls in
// prefix, the first MaxConfigSize bytes.
func tooLarge(size int64, prefix []byte) Problem {
	what := "the file is larger than"
	if size >= 0 {
		what = fmt.Sprintf("the file is %d bytes, over", size)
	}
	line, field := locateCut(prefix)
	where := ""
	if field != "" {
		where = " (the limit falls in this value)"
	}
	return Problem{Line: line, Field: field, Message: fmt.Sprintf("%s the limit of %d bytes (4 MiB, controlplane.MaxConfigSize)%s; split the services between meshd replicas or shorten the file", what, MaxConfigSize, where)}
}

// locateCut finds the line where prefix ends and, when it can, the field
// path of the key on that line: it parses the complete lines before it
// plus the last line with its value replaced (the value is what the limit
// cut), and looks for the key on that line in the tree.
func locateCut(prefix []byte) (line int, field string) {
	text := string(prefix)
	start := strings.LastIndexByte(text, '\n') + 1
	line = strings.Count(text, "\n") + 1
	last := text[start:]
	switch i := strings.Index(last, ": "); {
	case i >= 0 && i < 1200: // yaml.v3 keys are at most 1024 bytes
		last = last[:i+2] + "x"
	case strings.HasPrefix(strings.TrimLeft(last, " "), "- "):
		last = last[:len(last)-len(strings.TrimLeft(last, " "))] + "- x"
	default:
		return line, ""
	}
	var root yaml.Node
	if err := yaml.Unmarshal([]byte(text[:start]+last+"\n"), &root); err != nil || len(root.Content) == 0 {
		return line, ""
	}
	return line, pathAtLine(root.Content[0], "", line)
}

// pathAtLine returns the field path of the last key or list item on line
// in the tree under n, or "".
func pathAtLine(n *yaml.Node, path string, line int) string {
	found := ""
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			p := join(path, pathKey(n.Content[i].Value))
			if n.Content[i].Line == line {
				found = p
			}
			if sub := pathAtLine(n.Content[i+1], p, line); sub != "" {
				found = sub
			}
		}
	case yaml.SequenceNode:
		for i, item := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			if item.Line == line && item.Kind == yaml.ScalarNode {
				found = p
			}
			if sub := pathAtLine(item, p, line); sub != "" {
				found = sub
			}
		}
	}
	return found
}

// pathKey is key as a segment of a field path: as written, or cut to
// maxQuoted bytes and marked when longer, so field paths stay short.
func pathKey(key string) string {
	if len(key) <= maxQuoted {
		return key
	}
	return strings.Trim(strconv.Quote(runePrefix(key, maxQuoted)), `"`) + "…"
}

// ParseConfig parses and validates a YAML config. name is used in errors
// (usually the file name). A refused config returns a *ConfigError whose
// problems name the line and the field path of what is wrong, and what is
// allowed there.
//
// Because meshd drops whatever a new config leaves out, ParseConfig refuses
// anything that may be a half-written file rather than guess:
//   - data over MaxConfigSize;
//   - an empty file, or one with only whitespace and comments;
//   - a file that does not end with a newline (it may be cut mid-line,
//     which can still parse: "port: 84" from "port: 8443");
//   - a file without the top-level key services; to remove every service,
//     say so with "services: []";
//   - a key with no value ("routes:" and nothing under it, which is what a
//     file cut after a key looks like); write [] for an empty list or
//     remove the key;
//   - more than one YAML document ("---" between two);
//   - syntax errors, unknown keys, duplicate keys, merge keys ("<<"), and
//     values of the wrong type (a negative weight, a quoted number, a list
//     where a mapping belongs, "ture" for true).
//
// Then it validates the config as Server.SetConfig does.
func ParseConfig(name string, data []byte) (*Config, error) {
	refuse := func(ps ...Problem) error { return &ConfigError{File: name, Problems: ps} }
	if len(data) > MaxConfigSize {
		return nil, refuse(tooLarge(int64(len(data)), data[:MaxConfigSize]))
	}
	root, problems := parseDocument(data)
	if len(problems) > 0 {
		return nil, refuse(problems...)
	}
	d := &decoder{budget: 4*countNodes(root) + 1024}
	cfg := &Config{}
	body := root.Content[0]
	d.value(body, reflect.ValueOf(cfg).Elem(), "", "")
	if body.Kind == yaml.MappingNode {
		if k, _ := mapEntry(body, "services"); k == nil {
			d.problems = append(d.problems, Problem{Line: body.Line, Field: "services",
				Message: "missing; a config lists its services (a file cut off before them looks like this): to remove every service, write services: []"})
		}
	}
	if len(d.problems) > 0 {
		sortProblems(d.problems)
		return nil, refuse(d.problems...)
	}
	if problems := validate(cfg); len(problems) > 0 {
		for i := range problems {
			problems[i].Line = lineOf(root, problems[i].Field)
		}
		return nil, refuse(problems...)
	}
	return cfg, nil
}

// parseDocument parses data into one YAML document with content, or says
// why it cannot: empty, not ending with a newline, not YAML, or several
// documents.
func parseDocument(data []byte) (*yaml.Node, []Problem) {
	var problems []Problem
	lines := bytes.Count(data, []byte("\n"))
	if len(data) > 0 && data[len(data)-1] != '\n' {
		problems = append(problems, Problem{Line: lines + 1,
			Message: "the file does not end with a newline, so it may be cut off mid-line (a half-written file); end it with a newline"})
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	root := &yaml.Node{}
	err := dec.Decode(root)
	if err == nil {
		var next yaml.Node
		switch err = dec.Decode(&next); {
		case errors.Is(err, io.EOF):
			err = nil
		case err == nil:
			problems = append(problems, Problem{Line: documentStart(data, next.Line),
				Message: "a second YAML document starts here; a config is one document: remove the '---' line, or merge the documents"})
			return nil, problems
		}
	}
	if errors.Is(err, io.EOF) || (err == nil && isEmptyDocument(root)) {
		return nil, []Problem{{Line: 1, Message: "the file is empty (or holds only comments); meshd does not read that as \"no services\": to remove every service, write services: []"}}
	}
	if err != nil {
		return nil, append(problems, syntaxProblem(data, err))
	}
	return root, problems
}

func isEmptyDocument(root *yaml.Node) bool {
	if root.Kind != yaml.DocumentNode || len(root.Content) == 0 {
		return true
	}
	c := root.Content[0]
	return c.Kind == yaml.ScalarNode && c.ShortTag() == "!!null"
}

// documentStart finds the "---" line before line (1-based) that starts a
// document, or returns line.
func documentStart(data []byte, line int) int {
	ls := strings.Split(string(data), "\n")
	for i := min(line, len(ls)) - 1; i >= 0; i-- {
		if l := ls[i]; l == "---" || strings.HasPrefix(l, "--- ") || strings.HasPrefix(l, "---\t") || l == "---\r" {
			return i + 1
		}
	}
	return line
}

var yamlLineRE = regexp.MustCompile(`^line (\d+): (.*)$`)

// splitYAMLError splits a yaml.v3 error into its line (0 when absent) and
// message.
func splitYAMLError(err error) (int, string) {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return line, m[2]
	}
	return 0, msg
}

// syntaxProblem turns a yaml.v3 syntax error into a Problem on the line at
// fault with a message saying how to fix it.
//
// yaml.v3 reports many errors at the start of the construct the parser was
// in, not at the token that broke it, and for parser errors that line is
// zero-based: a list item among keys four lines into a mapping is reported
// at the line above the mapping. So the line is found again here: a tab in
// the indentation is searched for; an unclosed '[' or '{' is at the
// construct's start (yaml's line + 1); a quote never closed is where yaml
// says; for the rest, the offending line is the first line whose prefix of
// the file already fails with the same error, found by bisection (a parse
// of a prefix fails the same way once it holds the offending token).
func syntaxProblem(data []byte, err error) Problem {
	line, msg := splitYAMLError(err)
	lines := strings.SplitAfter(string(data), "\n")
	hint := ""
	switch {
	case strings.Contains(msg, "tab character") || (msg == "found character that cannot start any token" && tabIndented(lines, line)):
		for i := max(line, 1) - 1; i < len(lines); i++ {
			if tabIndented(lines, i+1) {
				line = i + 1
				break
			}
		}
		hint = "a tab character in the indentation; YAML indents with spaces only"
	case msg == "did not find expected ',' or ']'":
		line++
		hint = "a list opened with '[' on this line is not closed with ']'"
	case msg == "did not find expected ',' or '}'":
		line++
		hint = "a mapping opened with '{' on this line is not closed with '}'"
	case msg == "found unexpected end of stream" && line > 0 && line <= len(lines) && strings.ContainsAny(lines[line-1], `"'`):
		hint = "a quoted string opened on this line is never closed"
	case strings.HasPrefix(msg, "did not find expected") || msg == "found unexpected end of stream":
		line = firstFailingLine(data, lines, line, msg)
		switch msg {
		case "did not find expected key":
			hint = "this line does not fit the mapping it is in: check its indentation (the keys of one mapping line up) and that no list item ('- ') sits among the keys"
		case "did not find expected '-' indicator":
			hint = "this line does not fit the list it is in: check its indentation (the items of one list line up, each starting with '- ')"
		}
	case strings.Contains(msg, "UTF-8"):
		if off := invalidUTF8(data); off >= 0 {
			line = lineAt(data, off)
			hint = fmt.Sprintf("byte %d is not UTF-8; save the file as UTF-8", off)
		}
	case msg == "control characters are not allowed":
		if off := bytes.IndexFunc(data, isControl); off >= 0 {
			line = lineAt(data, off)
			hint = fmt.Sprintf("a control character (%U) at byte %d; remove it", data[off], off)
		}
	case strings.HasPrefix(msg, "unknown anchor '"):
		name := strings.TrimSuffix(strings.TrimPrefix(msg, "unknown anchor '"), "' referenced")
		if off := bytes.Index(data, []byte("*"+name)); off >= 0 {
			line = lineAt(data, off)
			hint = "an alias (*name) to an anchor (&name) not defined before it"
		}
	case msg == "mapping values are not allowed in this context":
		hint = "a ': ' where no key can start: check the indentation, or quote a value that holds ': '"
	case msg == "could not find expected ':'":
		hint = "a key without ':'; write key: value"
	}
	out := "not valid YAML: " + cutText(msg)
	if hint != "" {
		out = "not valid YAML: " + hint + " (yaml: " + cutText(msg) + ")"
	}
	return Problem{Line: line, Message: out}
}

// lineAt is the 1-based line of byte off of data.
func lineAt(data []byte, off int) int { return bytes.Count(data[:off], []byte("\n")) + 1 }

// invalidUTF8 is the offset of the first byte of data that is not UTF-8,
// or -1.
func invalidUTF8(data []byte) int {
	for off := 0; off < len(data); {
		r, size := utf8.DecodeRune(data[off:])
		if r == utf8.RuneError && size == 1 {
			return off
		}
		off += size
	}
	return -1
}

// isControl reports the characters YAML refuses in a file: C0 controls
// other than tab and line breaks, and DEL.
func isControl(r rune) bool {
	return (r < 0x20 && r != '\t' && r != '\n' && r != '\r') || r == 0x7f
}

// tabIndented says whether the 1-based line's leading whitespace holds a tab.
func tabIndented(lines []string, line int) bool {
	if line < 1 || line > len(lines) {
		return false
	}
	l := lines[line-1]
	return strings.Contains(l[:len(l)-len(strings.TrimLeft(l, " \t"))], "\t")
}

// firstFailingLine returns the smallest n >= from such that the first n
// lines fail to parse with msg, or from if none does.
func firstFailingLine(data []byte, lines []string, from int, msg string) int {
	prefix := func(n int) []byte {
		size := 0
		for _, l := range lines[:n] {
			size += len(l)
		}
		return data[:size]
	}
	fails := func(n int) bool {
		dec := yaml.NewDecoder(bytes.NewReader(prefix(n)))
		for {
			var node yaml.Node
			err := dec.Decode(&node)
			if errors.Is(err, io.EOF) {
				return false
			}
			if err != nil {
				_, m := splitYAMLError(err)
				return m == msg
			}
		}
	}
	// The offending line is usually a few lines below from: gallop from
	// there, then bisect, so a large file costs a few parses of a prefix.
	lo, hi := max(from, 1), len(lines)
	if lo > hi || !fails(hi) {
		return from
	}
	for step := 1; lo+step < hi; step *= 2 {
		if fails(lo + step) {
			hi = lo + step
			break
		}
		lo += step
	}
	for lo < hi {
		mid := (lo + hi) / 2
		if fails(mid) {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

// countNodes counts the nodes of the tree, not following aliases.
func countNodes(n *yaml.Node) int {
	c := 1
	for _, k := range n.Content {
		c += countNodes(k)
	}
	return c
}

func sortProblems(ps []Problem) {
	sort.SliceStable(ps, func(i, j int) bool { return ps[i].Line < ps[j].Line })
}

// decoder decodes a yaml.Node tree into the config types itself, rather
// than with yaml.v3's Decode, so that every problem carries the line of the
// node at fault, the field path, and what the field allows (the allowed
// struct tag, or the type's default description); and so that all
// problems are found, not the first.
type decoder struct {
	problems []Problem
	// budget bounds the nodes visited, aliases included, so that a file of
	// nested aliases ("billion laughs") cannot make decoding explode.
	budget int
}

var durationType = reflect.TypeOf(time.Duration(0))

func (d *decoder) fail(n *yaml.Node, path, format string, args ...any) {
	d.problems = append(d.problems, Problem{Line: n.Line, Field: path, Message: fmt.Sprintf(format, args...)})
}

// value decodes n into v. path is the field path; allowed describes what
// the field takes (empty: the type's default).
func (d *decoder) value(n *yaml.Node, v reflect.Value, path, allowed string) {
	if d.budget--; d.budget < 0 {
		if d.budget == -1 {
			d.fail(n, path, "the file expands to too many values through aliases (*name); write the values out")
		}
		return
	}
	for n.Kind == yaml.AliasNode {
		if n.Alias == nil {
			d.fail(n, path, "an alias to no anchor")
			return
		}
		n = n.Alias
	}
	if v.Kind() == reflect.Slice {
		// allowed describes the items; the list itself is a list of them.
		d.list(n, v, path, allowed)
		return
	}
	if allowed == "" {
		allowed = describe(v.Type())
	}
	if isNull(n) {
		if strings.HasSuffix(path, "]") {
			d.fail(n, path, "an empty list item; remove the '-' or give it a value (%s)", allowed)
		} else {
			d.fail(n, path, "has no value (a file cut off after this key looks like this); write a value (%s) or remove the key", allowed)
		}
		return
	}
	switch {
	case v.Kind() == reflect.Pointer:
		e := reflect.New(v.Type().Elem())
		d.value(n, e.Elem(), path, allowed)
		v.Set(e)
	case v.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			d.fail(n, path, "%s where a mapping is expected; %s takes %s", kindName(n), subject(path), allowed)
			return
		}
		d.mapping(n, v, path)
	case n.Kind != yaml.ScalarNode:
		d.fail(n, path, "%s where a single value is expected; %s takes %s", kindName(n), subject(path), allowed)
	default:
		d.scalar(n, v, path, allowed)
	}
}

// list decodes a sequence node into slice v; itemAllowed describes what
// each item takes (empty: the item type's default).
func (d *decoder) list(n *yaml.Node, v reflect.Value, path, itemAllowed string) {
	what := "a list ([a, b], or one '- ' item a line)"
	if itemAllowed != "" {
		what += " of " + itemAllowed
	}
	switch {
	case isNull(n):
		d.fail(n, path, "has no value (a file cut off after this key looks like this); write %s, [] for an empty list, or remove the key", what)
		return
	case n.Kind != yaml.SequenceNode:
		d.fail(n, path, "%s where a list is expected; %s takes %s", kindName(n), subject(path), what)
		return
	}
	s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
	for i, item := range n.Content {
		d.value(item, s.Index(i), fmt.Sprintf("%s[%d]", path, i), itemAllowed)
	}
	v.Set(s)
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" }

// mapping decodes a mapping node into struct v by the yaml tags.
func (d *decoder) mapping(n *yaml.Node, v reflect.Value, path string) {
	t := v.Type()
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || isNull(k) {
			d.fail(k, path, "%s as a key; keys are names like %s", kindName(k), strings.Join(keysOf(t), ", "))
			continue
		}
		fpath := join(path, pathKey(k.Value))
		if k.ShortTag() == "!!merge" {
			d.fail(k, path, "merge keys (<<) are not supported; write the keys out")
			continue
		}
		if first, dup := seen[k.Value]; dup {
			d.fail(k, fpath, "set twice (first at line %d); keep one", first)
			continue
		}
		seen[k.Value] = k.Line
		f, ok := fieldByKey(t, k.Value)
		if !ok {
			d.fail(k, fpath, "unknown key %s%s; the keys here are %s", quoteValue(k.Value), didYouMean(k.Value, keysOf(t)), strings.Join(keysOf(t), ", "))
			continue
		}
		d.value(val, v.FieldByIndex(f.Index), fpath, f.Tag.Get("allowed"))
	}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if key := yamlKey(f); key != "" && f.Tag.Get("required") == "true" {
			if _, ok := seen[key]; !ok {
				d.fail(n, join(path, key), "missing; %s takes %s", key, f.Tag.Get("allowed"))
			}
		}
	}
}

// scalar decodes a scalar node into a string, bool, unsigned integer,
// float or time.Duration.
func (d *decoder) scalar(n *yaml.Node, v reflect.Value, path, allowed string) {
	tag := n.ShortTag()
	bad := func(what string) {
		d.fail(n, path, "%s %s; %s takes %s", quoteScalar(n), what, subject(path), allowed)
	}
	switch {
	case v.Type() == durationType:
		switch tag {
		case "!!str":
			dur, err := time.ParseDuration(n.Value)
			if err != nil {
				bad("is not a duration")
				return
			}
			v.SetInt(int64(dur))
		case "!!int", "!!float":
			if f, err := strconv.ParseFloat(n.Value, 64); err == nil && f == 0 {
				return // 0 needs no unit
			}
			bad("has no unit")
		default:
			bad("is not a duration")
		}
	case v.Kind() == reflect.String:
		v.SetString(n.Value)
	case v.Kind() == reflect.Bool:
		var b bool
		if tag != "!!bool" || n.Decode(&b) != nil {
			bad("is not true or false")
			return
		}
		v.SetBool(b)
	case v.Kind() == reflect.Uint32:
		f, ok := d.number(n, bad)
		switch {
		case !ok:
		case f != math.Trunc(f):
			bad("is not a whole number")
		case f < 0:
			bad("is negative")
		case f > math.MaxUint32:
			bad("is too large")
		default:
			v.SetUint(uint64(f))
		}
	case v.Kind() == reflect.Float64:
		if f, ok := d.number(n, bad); ok {
			v.SetFloat(f)
		}
	default:
		panic("controlplane: no decoder for " + v.Type().String())
	}
}

// number reads an !!int or !!float scalar as a finite float64.
func (d *decoder) number(n *yaml.Node, bad func(string)) (float64, bool) {
	switch n.ShortTag() {
	case "!!int":
		var i int64
		if err := n.Decode(&i); err != nil {
			var u uint64
			if err := n.Decode(&u); err != nil {
				bad("is not a number")
				return 0, false
			}
			return float64(u), true
		}
		return float64(i), true
	case "!!float":
		var f float64
		if err := n.Decode(&f); err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			bad("is not a finite number")
			return 0, false
		}
		return f, true
	case "!!str":
		_, err := strconv.ParseFloat(strings.TrimSpace(n.Value), 64)
		switch {
		case err == nil && n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) != 0:
			bad("is a string, not a number (remove the quotes)")
		case errors.Is(err, strconv.ErrRange):
			bad("is too large") // plain digits past float64: YAML calls them a string
		default:
			bad("is not a number")
		}
	default:
		bad("is not a number")
	}
	return 0, false
}

// describe is what a field of type t takes, for fields without an allowed
// tag.
func describe(t reflect.Type) string {
	switch {
	case t == durationType:
		return "a duration with a unit, like 250ms or 2s"
	case t.Kind() == reflect.Pointer:
		return describe(t.Elem())
	case t.Kind() == reflect.Struct:
		return "a mapping with the keys " + strings.Join(keysOf(t), ", ")
	case t.Kind() == reflect.Bool:
		return "true or false"
	case t.Kind() == reflect.Uint32:
		return "a whole number from 0 to 4294967295"
	case t.Kind() == reflect.Float64:
		return "a number"
	default:
		return "a string"
	}
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	default:
		return quoteScalar(n)
	}
}

// quoteScalar shows a scalar as written: numbers and booleans bare,
// strings quoted (cut to a few dozen bytes).
func quoteScalar(n *yaml.Node) string {
	if n.Kind == yaml.ScalarNode && n.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) == 0 &&
		(n.ShortTag() == "!!int" || n.ShortTag() == "!!float" || n.ShortTag() == "!!bool") {
		return showNumber(n.Value)
	}
	return quoteValue(n.Value)
}

// subject names the field of path in a message: "weight", or "each item of
// endpoints" for a list item.
func subject(path string) string {
	if path == "" {
		return "the config"
	}
	last := path[strings.LastIndexByte(path, '.')+1:]
	if i := strings.IndexByte(last, '['); i >= 0 {
		return "each item of " + last[:i]
	}
	return last
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func yamlKey(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	key, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	return key
}

func keysOf(t reflect.Type) []string {
	var keys []string
	for i := 0; i < t.NumField(); i++ {
		if k := yamlKey(t.Field(i)); k != "" && k != "-" {
			keys = append(keys, k)
		}
	}
	return keys
}

func fieldByKey(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		if f := t.Field(i); yamlKey(f) == key && key != "-" {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// didYouMean suggests the key closest to k, when one is near.
func didYouMean(k string, keys []string) string {
	best, bestD := "", 3
	if len(k) > 64 {
		return ""
	}
	for _, c := range keys {
		if dist := editDistance(strings.ToLower(k), c); dist < bestD {
			best, bestD = c, dist
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// lineOf finds the line of the node at path ("services[0].routes[1].name")
// in the YAML tree, or of its nearest existing ancestor.
func lineOf(root *yaml.Node, path string) int {
	n := root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := n.Line
	if path == "" {
		return line
	}
	for _, seg := range strings.Split(path, ".") {
		for n.Kind == yaml.AliasNode && n.Alias != nil {
			n = n.Alias
		}
		key, idx := seg, -1
		if i := strings.IndexByte(seg, '['); i >= 0 {
			key = seg[:i]
			idx, _ = strconv.Atoi(strings.TrimSuffix(seg[i+1:], "]"))
		}
		if key != "" {
			k, v := mapEntry(n, key)
			if v == nil {
				return line
			}
			n, line = v, k.Line // the key's line: the value may be empty or start below
		}
		if idx >= 0 {
			for n.Kind == yaml.AliasNode && n.Alias != nil {
				n = n.Alias
			}
			if n.Kind != yaml.SequenceNode || idx >= len(n.Content) {
				return line
			}
			n = n.Content[idx]
			line = n.Line
		}
	}
	return line
}

func mapEntry(n *yaml.Node, key string) (k, v *yaml.Node) {
	if n.Kind != yaml.MappingNode {
		return nil, nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i], n.Content[i+1]
		}
	}
	return nil, nil
}
