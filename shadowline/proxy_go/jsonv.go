package main

// JSON values that keep what the Python side sees: objects in their key order (the
// order a redaction hash reads, and the order the tap re-encodes), numbers as their
// text with whether Python would read them as int or float.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/big"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

type object struct {
	keys []string
	vals map[string]any
}

type number string // the JSON text of a number

// parseJSON reads one JSON document (RFC 8259); objects become *object, arrays []any,
// numbers number, strings string, true/false bool, null nil. A repeated key keeps its
// last value at its first place, as Python's json and orjson do. A hand-written reader:
// encoding/json's token API cost a tenth of the proxy's CPU.
func parseJSON(data []byte) (any, error) {
	p := parser{data: data}
	v, err := p.value(0)
	if err != nil {
		return nil, err
	}
	p.space()
	if p.pos != len(p.data) {
		return nil, p.fail("data after the JSON value")
	}
	return v, nil
}

type parser struct {
	data []byte
	pos  int
}

func (p *parser) fail(what string) error {
	return fmt.Errorf("%s at byte %d", what, p.pos)
}

func (p *parser) space() {
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

func (p *parser) literal(word string, v any) (any, error) {
	if !bytes.HasPrefix(p.data[p.pos:], []byte(word)) {
		return nil, p.fail("invalid literal")
	}
	p.pos += len(word)
	return v, nil
}

func (p *parser) value(depth int) (any, error) {
	if depth > 1000 {
		return nil, p.fail("JSON nested deeper than 1000 levels")
	}
	p.space()
	if p.pos >= len(p.data) {
		return nil, p.fail("unexpected end of JSON")
	}
	switch c := p.data[p.pos]; {
	case c == '{':
		p.pos++
		o := &object{vals: map[string]any{}}
		p.space()
		if p.pos < len(p.data) && p.data[p.pos] == '}' {
			p.pos++
			return o, nil
		}
		for {
			p.space()
			if p.pos >= len(p.data) || p.data[p.pos] != '"' {
				return nil, p.fail("expected a key")
			}
			k, err := p.str()
			if err != nil {
				return nil, err
			}
			p.space()
			if p.pos >= len(p.data) || p.data[p.pos] != ':' {
				return nil, p.fail("expected ':'")
			}
			p.pos++
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			if _, seen := o.vals[k]; !seen {
				o.keys = append(o.keys, k)
			}
			o.vals[k] = v
			p.space()
			if p.pos < len(p.data) && p.data[p.pos] == ',' {
				p.pos++
				continue
			}
			if p.pos < len(p.data) && p.data[p.pos] == '}' {
				p.pos++
				return o, nil
			}
			return nil, p.fail("expected ',' or '}'")
		}
	case c == '[':
		p.pos++
		arr := []any{}
		p.space()
		if p.pos < len(p.data) && p.data[p.pos] == ']' {
			p.pos++
			return arr, nil
		}
		for {
			v, err := p.value(depth + 1)
			if err != nil {
				return nil, err
			}
			arr = append(arr, v)
			p.space()
			if p.pos < len(p.data) && p.data[p.pos] == ',' {
				p.pos++
				continue
			}
			if p.pos < len(p.data) && p.data[p.pos] == ']' {
				p.pos++
				return arr, nil
			}
			return nil, p.fail("expected ',' or ']'")
		}
	case c == '"':
		return p.str()
	case c == 't':
		return p.literal("true", true)
	case c == 'f':
		return p.literal("false", false)
	case c == 'n':
		return p.literal("null", nil)
	case c == '-' || (c >= '0' && c <= '9'):
		return p.num()
	}
	return nil, p.fail("unexpected character")
}

func digits(data []byte, pos int) int {
	for pos < len(data) && data[pos] >= '0' && data[pos] <= '9' {
		pos++
	}
	return pos
}

// num: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
func (p *parser) num() (any, error) {
	start, pos := p.pos, p.pos
	if p.data[pos] == '-' {
		pos++
	}
	switch {
	case pos < len(p.data) && p.data[pos] == '0':
		pos++
	case pos < len(p.data) && p.data[pos] >= '1' && p.data[pos] <= '9':
		pos = digits(p.data, pos)
	default:
		p.pos = pos
		return nil, p.fail("invalid number")
	}
	if pos < len(p.data) && p.data[pos] == '.' {
		end := digits(p.data, pos+1)
		if end == pos+1 {
			p.pos = pos
			return nil, p.fail("invalid number")
		}
		pos = end
	}
	if pos < len(p.data) && (p.data[pos] == 'e' || p.data[pos] == 'E') {
		pos++
		if pos < len(p.data) && (p.data[pos] == '+' || p.data[pos] == '-') {
			pos++
		}
		end := digits(p.data, pos)
		if end == pos {
			p.pos = pos
			return nil, p.fail("invalid number")
		}
		pos = end
	}
	p.pos = pos
	return number(p.data[start:pos]), nil
}

// str reads a string; one without escapes is taken as it is (its bytes are valid
// UTF-8: the body was checked), one with escapes is decoded by encoding/json.
func (p *parser) str() (string, error) {
	start := p.pos
	p.pos++
	escaped := false
	for p.pos < len(p.data) {
		c := p.data[p.pos]
		switch {
		case c == '"':
			p.pos++
			raw := p.data[start:p.pos]
			if !escaped {
				return string(raw[1 : len(raw)-1]), nil
			}
			var s string
			if err := json.Unmarshal(raw, &s); err != nil {
				return "", p.fail("invalid string escape")
			}
			return s, nil
		case c == '\\':
			escaped = true
			p.pos += 2
		case c < 0x20:
			return "", p.fail("control character in a string")
		default:
			p.pos++
		}
	}
	return "", p.fail("unterminated string")
}

// atPath is the value at a dotted path (list indices as numbers, negative from the
// end, as Python's), or an error naming the part that is not there.
func atPath(v any, path string) (any, error) {
	if path == "" {
		return v, nil
	}
	for _, part := range strings.Split(path, ".") {
		switch node := v.(type) {
		case []any:
			i, err := strconv.Atoi(part)
			if err != nil {
				return nil, fmt.Errorf("KeyError: %s", pyStr(part))
			}
			if i < 0 {
				i += len(node)
			}
			if i < 0 || i >= len(node) {
				return nil, fmt.Errorf("IndexError: list index out of range")
			}
			v = node[i]
		case *object:
			child, ok := node.vals[part]
			if !ok {
				return nil, fmt.Errorf("KeyError: %s", pyStr(part))
			}
			v = child
		default:
			return nil, fmt.Errorf("KeyError: %s", pyStr(part))
		}
	}
	return v, nil
}

// appendJSON writes v as compact JSON.
func appendJSON(buf []byte, v any) []byte {
	switch t := v.(type) {
	case nil:
		return append(buf, "null"...)
	case bool:
		if t {
			return append(buf, "true"...)
		}
		return append(buf, "false"...)
	case number:
		return append(buf, t...)
	case string:
		return appendString(buf, t)
	case []any:
		buf = append(buf, '[')
		for i, x := range t {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = appendJSON(buf, x)
		}
		return append(buf, ']')
	case *object:
		buf = append(buf, '{')
		for i, k := range t.keys {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = appendString(buf, k)
			buf = append(buf, ':')
			buf = appendJSON(buf, t.vals[k])
		}
		return append(buf, '}')
	}
	panic(fmt.Sprintf("not a JSON value: %T", v))
}

const hexDigits = "0123456789abcdef"

func appendString(buf []byte, s string) []byte {
	buf = append(buf, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				buf = append(buf, '\\', c)
			case c < 0x20:
				buf = append(buf, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&15])
			default:
				buf = append(buf, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			buf = append(buf, `\ufffd`...)
		} else {
			buf = append(buf, s[i:i+size]...)
		}
		i += size
	}
	return append(buf, '"')
}

// pyRepr is Python's repr() of the value Python's JSON parser would make of v: the
// text the tap hashes (“hmac(salt, repr(value))“), so a field hashed here equals
// the same field hashed by the Python tap.
func pyRepr(v any) (string, error) {
	var sb strings.Builder
	if err := writeRepr(&sb, v); err != nil {
		return "", err
	}
	return sb.String(), nil
}

func writeRepr(sb *strings.Builder, v any) error {
	switch t := v.(type) {
	case nil:
		sb.WriteString("None")
	case bool:
		if t {
			sb.WriteString("True")
		} else {
			sb.WriteString("False")
		}
	case number:
		s, err := pyNumber(string(t))
		if err != nil {
			return err
		}
		sb.WriteString(s)
	case string:
		sb.WriteString(pyStr(t))
	case []any:
		sb.WriteByte('[')
		for i, x := range t {
			if i > 0 {
				sb.WriteString(", ")
			}
			if err := writeRepr(sb, x); err != nil {
				return err
			}
		}
		sb.WriteByte(']')
	case *object:
		sb.WriteByte('{')
		for i, k := range t.keys {
			if i > 0 {
				sb.WriteString(", ")
			}
			sb.WriteString(pyStr(k))
			sb.WriteString(": ")
			if err := writeRepr(sb, t.vals[k]); err != nil {
				return err
			}
		}
		sb.WriteByte('}')
	default:
		return fmt.Errorf("not a JSON value: %T", v)
	}
	return nil
}

// pyNumber: a JSON integer is a Python int (any size), anything with a fraction or an
// exponent a float, written as Python's repr writes floats.
func pyNumber(text string) (string, error) {
	if !strings.ContainsAny(text, ".eE") {
		n, ok := new(big.Int).SetString(text, 10)
		if !ok {
			return "", fmt.Errorf("not a number: %s", text)
		}
		return n.String(), nil
	}
	f, err := strconv.ParseFloat(text, 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return "", err
	}
	return pyFloat(f), nil
}

// pyFloat is Python's float repr: the shortest digits that read back to f, in
// positional notation when the decimal point falls within 16 digits, else as
// d.ddde±XX.
func pyFloat(f float64) string {
	switch {
	case math.IsInf(f, 1):
		return "inf"
	case math.IsInf(f, -1):
		return "-inf"
	case math.IsNaN(f):
		return "nan"
	}
	sign := ""
	if math.Signbit(f) {
		sign = "-"
		f = -f
	}
	if f == 0 {
		return sign + "0.0"
	}
	// 'e' with the shortest precision: d.dddde±XX
	e := strconv.FormatFloat(f, 'e', -1, 64)
	mant, expText, _ := strings.Cut(e, "e")
	exp, _ := strconv.Atoi(expText)
	digits := strings.Replace(mant, ".", "", 1)
	decpt := exp + 1 // the value is 0.digits × 10^decpt
	if decpt <= -4 || decpt > 16 {
		out := digits[:1]
		if len(digits) > 1 {
			out += "." + digits[1:]
		}
		es := "+"
		if exp < 0 {
			es = "-"
			exp = -exp
		}
		return fmt.Sprintf("%s%se%s%02d", sign, out, es, exp)
	}
	switch {
	case decpt <= 0:
		return sign + "0." + strings.Repeat("0", -decpt) + digits
	case decpt >= len(digits):
		return sign + digits + strings.Repeat("0", decpt-len(digits)) + ".0"
	default:
		return sign + digits[:decpt] + "." + digits[decpt:]
	}
}

// pyStr is Python's repr of a str: single quotes unless the text holds a single quote
// and no double one; backslash escapes for the quote, backslash, \t \n \r, and
// \xNN / \uNNNN / \UNNNNNNNN for characters that are not printable.
func pyStr(s string) string {
	quote := byte('\'')
	if strings.ContainsRune(s, '\'') && !strings.ContainsRune(s, '"') {
		quote = '"'
	}
	var sb strings.Builder
	sb.WriteByte(quote)
	for _, r := range s {
		switch {
		case r == rune(quote) || r == '\\':
			sb.WriteByte('\\')
			sb.WriteRune(r)
		case r == '\t':
			sb.WriteString(`\t`)
		case r == '\n':
			sb.WriteString(`\n`)
		case r == '\r':
			sb.WriteString(`\r`)
		case r < ' ' || r == 0x7f:
			fmt.Fprintf(&sb, `\x%02x`, r)
		case r < 0x7f:
			sb.WriteRune(r)
		case isPrintable(r):
			sb.WriteRune(r)
		case r <= 0xff:
			fmt.Fprintf(&sb, `\x%02x`, r)
		case r <= 0xffff:
			fmt.Fprintf(&sb, `\u%04x`, r)
		default:
			fmt.Fprintf(&sb, `\U%08x`, r)
		}
	}
	sb.WriteByte(quote)
	return sb.String()
}

// isPrintable is Python 3.11's str.isprintable for a non-ASCII character (the table in
// printable.go, made from Python itself).
func isPrintable(r rune) bool {
	i := sort.Search(len(printable), func(i int) bool { return printable[i][1] >= r })
	return i < len(printable) && printable[i][0] <= r
}
