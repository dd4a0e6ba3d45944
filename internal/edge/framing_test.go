package edge

import (
	"bufio"
	"strings"
	"testing"

	"github.com/valyala/fasthttp"
)

// playerPost is a progress post as a browser's player sends it.
const playerPost = "POST /v1/progress HTTP/1.1\r\nHost: command.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36\r\n" +
	"Accept: */*\r\nAccept-Language: en-US,en;q=0.9\r\nOrigin: https://player.example.com\r\nContent-Type: application/json\r\n" +
	"Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJwbGF5ZXItNDIiLCJleHAiOjE3MzIyNDM2MDB9.c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJlc2ln\r\n" +
	"Content-Length: 121\r\n\r\n"

// BenchmarkFramingCheck is what the framing check adds to every request with
// a body: a scan of its raw headers.
func BenchmarkFramingCheck(b *testing.B) {
	var h fasthttp.RequestHeader
	if err := h.Read(bufio.NewReader(strings.NewReader(playerPost))); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := framingError(&h); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBearer is the bearer parse every authenticated request pays,
// the check for a second Authorization header included.
func BenchmarkBearer(b *testing.B) {
	var h fasthttp.RequestHeader
	if err := h.Read(bufio.NewReader(strings.NewReader(playerPost))); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if tok, err := bearer(&h); err != nil || tok == nil {
			b.Fatal(tok, err)
		}
	}
}
