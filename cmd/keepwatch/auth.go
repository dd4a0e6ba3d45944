package main

import (
	"flag"
	"strings"
	"time"

	"github.com/keepwatch/keepwatch/internal/auth"
)

// tokenFlags are the checks the command and query APIs make on a token
// besides its signature, exp and sub.
type tokenFlags struct {
	issuer, audience string
	maxTTL, leeway   time.Duration
}

func (f *tokenFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.issuer, "auth-issuer", "", "when set, a token's iss must equal it")
	fs.StringVar(&f.audience, "auth-audience", "", "when set, a token's aud must name it")
	fs.DurationVar(&f.maxTTL, "auth-max-ttl", 0, "when set, the longest lifetime (exp - iat) a token may have; iat is then required (0: any)")
	fs.DurationVar(&f.leeway, "auth-leeway", auth.DefaultLeeway, "how far in the future a token's iat and nbf may lie, for an issuer whose clock runs ahead")
}

// verifier checks tokens against secrets (comma-separated) with these checks.
func (f tokenFlags) verifier(secrets string, cacheSize int) (*auth.Verifier, error) {
	return auth.New(auth.Options{Secrets: strings.Split(secrets, ","), CacheSize: cacheSize,
		Issuer: f.issuer, Audience: f.audience, MaxTTL: f.maxTTL, Leeway: f.leeway})
}
