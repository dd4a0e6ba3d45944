package ijson_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/keepwatch/keepwatch/internal/ijson"
)

func TestCheckAccepts(t *testing.T) {
	for _, text := range []string{
		`{}`, `[]`, `0`, `-0`, `-0.0e-0`, `1E+2`, `12.5e-3`, `"x"`, `true`, `false`, `null`,
		" \t\r\n{ \"a\" : [ 1 , { } , [ ] ] } \n",
		`{"a":1,"b":{"a":1},"c":[{"a":1},{"a":2}]}`, // the same key in different objects
		`{"":1,"a":{"":2}}`,
		`{"\u00e9":1,"é2":2}`,
		`{"😀":1,"\ud83d\ude00x":2}`, // a surrogate pair escape
		`{"a\"b":1,"a\\b":2,"a/b":3,"a\/c":4}`,
		`["\b\f\n\r\t\u0000"]`,
		`{"aé":1,"a\u00c3\u00a9":2}`, // é (U+00E9) is not Ã© (U+00C3 U+00A9)
		`[[[[1]]]]`,
	} {
		if err := ijson.Check([]byte(text), 4); err != nil {
			t.Errorf("%s: %v", text, err)
		}
	}
}

func TestCheckRefuses(t *testing.T) {
	for _, tc := range []struct {
		name, text, reason string
	}{
		{"empty", ``, "end of the text"},
		{"only space", ` `, "end of the text"},
		{"repeated key", `{"percent":10,"percent":90}`, `the key "percent" appears twice`},
		{"repeated key escaped", `{"percent":10,"perc\u0065nt":90}`, `the key "percent" appears twice`},
		{"repeated key both escaped", `{"\u0070ercent":10,"perc\u0065nt":90}`, `the key "percent" appears twice`},
		{"repeated key solidus escape", `{"a/b":1,"a\/b":2}`, `the key "a/b" appears twice`},
		{"repeated key by surrogate pair", `{"😀":1,"\ud83d\ude00":2}`, `the key "😀" appears twice`},
		{"repeated key nested", `{"a":{"x":1,"y":2,"x":3}}`, `the key "x" appears twice`},
		{"repeated key in an array", `{"events":[{"v":1},{"v":1,"v":2}]}`, `the key "v" appears twice`},
		{"repeated empty key", `{"":1,"":2}`, `the key "" appears twice`},
		{"repeated key among many", `{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9,"j":10,"a":11}`, `the key "a" appears twice`},
		{"lone high surrogate", `{"a":"\ud800"}`, "lone UTF-16 surrogate"},
		{"lone low surrogate", `{"a":"\udc00"}`, "lone UTF-16 surrogate"},
		{"high surrogate then a letter", `{"a":"\ud800x"}`, "lone UTF-16 surrogate"},
		{"high surrogate then another high", `{"a":"\ud800\ud800"}`, "lone UTF-16 surrogate"},
		{"high surrogate at the end", `"\ud800`, "lone UTF-16 surrogate"},
		{"lone surrogate in a key", `{"a\udfff":1}`, "lone UTF-16 surrogate"},
		{"invalid UTF-8", "{\"a\":\"\xff\"}", "invalid UTF-8"},
		{"invalid UTF-8 in a key", "{\"a\xfe\":1}", "invalid UTF-8"},
		{"UTF-8 of a surrogate", "\"\xed\xa0\x80\"", "invalid UTF-8"},
		{"overlong UTF-8", "\"\xc0\xaf\"", "invalid UTF-8"},
		{"truncated UTF-8", "\"\xe2\x82\"", "invalid UTF-8"},
		{"raw control character", "\"a\x01\"", "control character"},
		{"raw newline in a string", "\"a\nb\"", "control character"},
		{"bad escape", `"\q"`, "invalid escape"},
		{"short unicode escape", `"\u12"`, `invalid \u escape`},
		{"non-hex unicode escape", `"\u12g4"`, `invalid \u escape`},
		{"unterminated string", `"abc`, "unterminated"},
		{"leading zero", `01`, "text after"},
		{"leading plus", `+1`, "unexpected character"},
		{"bare point", `.5`, "unexpected character"},
		{"trailing point", `1.`, "no digit after the decimal point"},
		{"empty exponent", `1e`, "no digit in the exponent"},
		{"minus alone", `-`, "invalid number"},
		{"NaN", `NaN`, "unexpected character"},
		{"Infinity", `-Infinity`, "invalid number"},
		{"hex", `0x10`, "text after"},
		{"single quotes", `{'a':1}`, "expected a key"},
		{"unquoted key", `{a:1}`, "expected a key"},
		{"trailing comma in an object", `{"a":1,}`, "expected a key"},
		{"trailing comma in an array", `[1,]`, "unexpected character"},
		{"missing colon", `{"a" 1}`, "expected ':'"},
		{"two values", `{} {}`, "text after"},
		{"byte order mark", "\xef\xbb\xbf{}", "unexpected character"},
		{"too deep", `[[[[[1]]]]]`, "nest deeper than 4"},
		{"too deep objects", `{"a":{"a":{"a":{"a":{"a":1}}}}}`, "nest deeper than 4"},
		{"truncated", `{"a":[1,2`, "end of the text"},
		{"wrong literal", `nul`, "unexpected character"},
		{"capital literal", `True`, "unexpected character"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ijson.Check([]byte(tc.text), 4)
			var e *ijson.Error
			if !errors.As(err, &e) {
				t.Fatalf("%q: error %v, want an *ijson.Error", tc.text, err)
			}
			if !strings.Contains(e.Reason, tc.reason) {
				t.Errorf("%q: reason %q, want it to say %q", tc.text, e.Reason, tc.reason)
			}
			if e.Offset < 0 || e.Offset > len(tc.text) {
				t.Errorf("%q: offset %d outside the text", tc.text, e.Offset)
			}
		})
	}
}

// TestRepeatedKeyNamesTheKey: the error carries the key, decoded, so the
// caller can say which one.
func TestRepeatedKeyNamesTheKey(t *testing.T) {
	err := ijson.Check([]byte(`{"x":1,"perc\u0065nt":10,"percent":90}`), 4)
	var e *ijson.Error
	if !errors.As(err, &e) || e.Key != "percent" {
		t.Fatalf("error %v, want the key percent", err)
	}
	if e.Offset != strings.Index(`{"x":1,"perc\u0065nt":10,"percent":90}`, `"percent"`) {
		t.Errorf("offset %d, want the second spelling's", e.Offset)
	}
}

// TestCheckerReuseAllocatesNothing: a Checker checks an ordinary body again
// without allocating, escaped keys included.
func TestCheckerReuseAllocatesNothing(t *testing.T) {
	body := []byte(`{"sent_at":1,"events":[{"video_id":"a","perc\u0065nt":1,"x":{"y":[1,2]}},{"video_id":"b","percent":2}]}`)
	var c ijson.Checker
	if err := c.Check(body, 8); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() { _ = c.Check(body, 8) }); n != 0 {
		t.Errorf("a reused checker allocates %v times per check", n)
	}
}

// goDuplicate walks text with encoding/json's tokenizer and reports whether
// an object repeats a key: an oracle independent of the package.
func goDuplicate(text []byte) (bool, error) {
	dec := json.NewDecoder(bytes.NewReader(text))
	type frame struct {
		obj    bool
		keys   map[string]bool
		expect bool // the next string token of an object is a key
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if top != nil && top.obj && top.expect && tok != json.Delim('}') {
			k := tok.(string)
			if top.keys[k] {
				return true, nil
			}
			top.keys[k] = true
			top.expect = false
			continue
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{obj: true, keys: map[string]bool{}, expect: true})
			continue
		case json.Delim('['):
			stack = append(stack, &frame{})
			continue
		case json.Delim(']'), json.Delim('}'):
			stack = stack[:len(stack)-1]
		}
		// A value ended: the enclosing object expects a key next.
		if len(stack) > 0 && stack[len(stack)-1].obj {
			stack[len(stack)-1].expect = true
		}
	}
}

// FuzzCheck holds Check to encoding/json: what Check accepts, encoding/json
// reads as one value of valid UTF-8 with no repeated key; what it refuses is
// invalid for encoding/json, not UTF-8, too deep, has a repeated key or a
// lone surrogate escape.
func FuzzCheck(f *testing.F) {
	for _, s := range []string{
		`{"a":1}`, `{"a":1,"a":2}`, `{"a":"\ud800"}`, "\"\xff\"", `[[[[[1]]]]]`, `{"a\u0062":1,"ab":2}`,
		`{"a":[{"b":1},{"b":2,"c":{"d":null}}],"e":-0.5e+7}`, `"\ud83d\ude00"`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, text []byte) {
		const depth = 4
		err := ijson.Check(text, depth)
		if err == nil {
			var v any
			dec := json.NewDecoder(bytes.NewReader(text))
			dec.UseNumber() // magnitude is the reader's business, not the text's
			if jerr := dec.Decode(&v); jerr != nil {
				t.Fatalf("%q passed, encoding/json refuses it: %v", text, jerr)
			}
			if !utf8.Valid(text) {
				t.Fatalf("%q passed but is not UTF-8", text)
			}
			if dup, _ := goDuplicate(text); dup {
				t.Fatalf("%q passed but repeats a key", text)
			}
			return
		}
		var e *ijson.Error
		if !errors.As(err, &e) {
			t.Fatalf("error %v is not an *ijson.Error", err)
		}
		switch {
		case strings.Contains(e.Reason, "appears twice"):
			if dup, derr := goDuplicate(text); derr == nil && !dup {
				t.Fatalf("%q: %v, but encoding/json finds no repeated key", text, err)
			}
		case strings.Contains(e.Reason, "nest deeper"), strings.Contains(e.Reason, "surrogate"), strings.Contains(e.Reason, "UTF-8"):
		default:
			if json.Valid(text) {
				t.Fatalf("%q: %v, but encoding/json finds it valid", text, err)
			}
		}
	})
}
