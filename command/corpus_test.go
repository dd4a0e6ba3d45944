package command

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
)

// CorpusCase is one line of a testdata/contract file.
type CorpusCase struct {
	Status int
	Name   string
	Body   []byte
}

// ReadCorpus reads testdata/contract/name: bodies with the status the
// server answers them, for the contract test and as fuzz seeds.
func ReadCorpus(tb testing.TB, name string) []CorpusCase {
	tb.Helper()
	f, err := os.Open("testdata/contract/" + name)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	var cases []CorpusCase
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		fs := strings.SplitN(line, " ", 3)
		if len(fs) < 2 {
			tb.Fatalf("%s:%d: want: status name body", name, n)
		}
		status, err := strconv.Atoi(fs[0])
		if err != nil {
			tb.Fatalf("%s:%d: status %q", name, n, fs[0])
		}
		body := ""
		if len(fs) == 3 {
			body = fs[2]
		}
		if strings.HasPrefix(body, `q"`) {
			if body, err = strconv.Unquote(body[1:]); err != nil {
				tb.Fatalf("%s:%d: quoted body: %v", name, n, err)
			}
		}
		cases = append(cases, CorpusCase{status, fs[1], []byte(body)})
	}
	if err := sc.Err(); err != nil {
		tb.Fatal(err)
	}
	if len(cases) == 0 {
		tb.Fatalf("%s holds no case", name)
	}
	return cases
}
