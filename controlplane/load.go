package controlplane

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

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
	// Message says what is wrong and what is allowed.
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

func (e *ConfigError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "controlplane: %s refused", e.File)
	for i, p := range e.Problems {
		if i == 0 {
			b.WriteString(": ")
		} else {
			b.WriteString("; ")
		}
		b.WriteString(p.String())
	}
	return b.String()
}

// LoadConfigFile reads, parses and validates the YAML config at path.
func LoadConfigFile(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("controlplane: read config: %w", err)
	}
	return ParseConfig(path, data)
}

// ParseConfig parses and validates a YAML config. name is used in errors
// (usually the file name). Unknown keys are errors, so a typo is not
// silently ignored. A failed parse or validation returns a *ConfigError.
func ParseConfig(name string, data []byte) (*Config, error) {
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil && !errors.Is(err, io.EOF) {
		return nil, &ConfigError{File: name, Problems: yamlProblems(err)}
	}
	cfg := &Config{}
	if root.Kind != 0 {
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
			return nil, &ConfigError{File: name, Problems: yamlProblems(err)}
		}
	}
	if problems := validate(cfg); len(problems) > 0 {
		for i := range problems {
			problems[i].Line = lineOf(&root, problems[i].Field)
		}
		return nil, &ConfigError{File: name, Problems: problems}
	}
	return cfg, nil
}

var yamlLineRE = regexp.MustCompile(`^line (\d+): (.*)$`)

// yamlProblems turns yaml.v3's errors into Problems with line numbers and a
// hint for the most common mistake, a misspelt key.
func yamlProblems(err error) []Problem {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
			line, _ := strconv.Atoi(m[1])
			return []Problem{{Line: line, Message: "not valid YAML: " + m[2]}}
		}
		return []Problem{{Message: "not valid YAML: " + msg}}
	}
	var out []Problem
	for _, e := range te.Errors {
		p := Problem{Message: e}
		if m := yamlLineRE.FindStringSubmatch(e); m != nil {
			p.Line, _ = strconv.Atoi(m[1])
			p.Message = m[2]
		}
		if strings.Contains(p.Message, "not found in type") {
			field := strings.TrimPrefix(strings.SplitN(p.Message, " not found", 2)[0], "field ")
			p.Message = fmt.Sprintf("unknown key %q; check the spelling against the documented keys (services, routes, versions, split, retry, fault, authorization, ...)", field)
		} else if strings.Contains(p.Message, "time.Duration") {
			p.Message += "; write durations with a unit, like 250ms or 2s"
		}
		out = append(out, p)
	}
	return out
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
