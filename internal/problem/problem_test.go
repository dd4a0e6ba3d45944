package problem_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"testing"

	"github.com/gofiber/fiber/v2"

	"github.com/keepwatch/keepwatch"
	"github.com/keepwatch/keepwatch/internal/problem"
)

// TestWrite checks the one mapping of errors to problem details: status,
// type, a safe detail, the field list and Retry-After.
func TestWrite(t *testing.T) {
	for _, tc := range []struct {
		name       string
		err        error
		status     int
		typ        string
		detail     string
		fields     int
		retryAfter string
	}{
		{"invalid with fields", &keepwatch.Error{Code: keepwatch.EINVALID, Message: "bad", Fields: []keepwatch.FieldError{{Field: "percent", Detail: "x"}}},
			422, "urn:keepwatch:problem:invalid", "bad", 1, ""},
		{"wrapped", fmt.Errorf("handler: %w", keepwatch.Errorf(keepwatch.EUNAUTHORIZED, "no token")), 401, "urn:keepwatch:problem:unauthorized", "no token", 0, ""},
		{"unavailable gets a default Retry-After", keepwatch.Errorf(keepwatch.EUNAVAILABLE, "down"), 503, "urn:keepwatch:problem:unavailable", "down", 0, "1"},
		{"explicit Retry-After", &keepwatch.Error{Code: keepwatch.ERATELIMITED, Message: "slow down", RetryAfter: 7}, 429, "urn:keepwatch:problem:rate_limited", "slow down", 0, "7"},
		{"internal hides its cause", &keepwatch.Error{Code: keepwatch.EINTERNAL, Message: "secret detail", Err: errors.New("db password wrong")}, 500, "urn:keepwatch:problem:internal", "internal error", 0, ""},
		{"plain error is internal", errors.New("boom at 10.0.0.1"), 500, "urn:keepwatch:problem:internal", "internal error", 0, ""},
		{"fiber too large", fiber.ErrRequestEntityTooLarge, 413, "urn:keepwatch:problem:too_large", "the request body is larger than the limit", 0, ""},
		{"fiber unknown route", fiber.ErrNotFound, 404, "urn:keepwatch:problem:not_found", "no such resource", 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			app := fiber.New(fiber.Config{ErrorHandler: problem.ErrorHandler})
			app.Get("/", func(c *fiber.Ctx) error { return tc.err })
			resp, err := app.Test(httptest.NewRequest("GET", "/", nil), -1)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
			if ct := resp.Header.Get("Content-Type"); ct != problem.ContentType {
				t.Errorf("content type %q", ct)
			}
			if ra := resp.Header.Get("Retry-After"); ra != tc.retryAfter {
				t.Errorf("Retry-After %q, want %q", ra, tc.retryAfter)
			}
			var d problem.Details
			if err := json.Unmarshal(body, &d); err != nil {
				t.Fatalf("body is not problem JSON: %v: %s", err, body)
			}
			if d.Status != tc.status || d.Type != tc.typ || d.Detail != tc.detail || len(d.Errors) != tc.fields || d.Title == "" {
				t.Errorf("details = %+v", d)
			}
		})
	}
}
