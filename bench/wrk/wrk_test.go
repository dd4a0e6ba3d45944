package wrk

import (
	"testing"
	"time"
)

func TestParseFindsTheScriptFigures(t *testing.T) {
	out := []byte(`Running 15s test @ http://127.0.0.1:1234
  1 threads and 64 connections
KWBENCH {"duration_us":15000000,"requests":600000,"bytes":1,"connect":0,"read":2,"write":0,"status":3,"timeout":1,"p50_us":800,"p90_us":1200,"p99_us":2500,"p999_us":4000,"max_us":9000,"mean_us":850.5}
`)
	r, err := parse(out)
	if err != nil {
		t.Fatal(err)
	}
	if r.RPS != 40000 || r.P50 != 800*time.Microsecond || r.P99 != 2500*time.Microsecond || r.Errors() != 6 {
		t.Errorf("parsed %+v (errors %d)", r, r.Errors())
	}
	if _, err := parse([]byte("no figures")); err == nil {
		t.Error("output without figures parsed")
	}
}
