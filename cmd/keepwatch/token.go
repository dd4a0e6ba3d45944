package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/keepwatch/keepwatch/internal/auth"
)

// runToken prints a token for a user, signed with the first --auth-secret, for
// development and benchmarks.
func runToken(_ context.Context, env *environment, args []string) error {
	fs := newFlagSet(env, "token", "Print an HS256 bearer token for a user, signed with the first --auth-secret.")
	user := fs.String("user", "", "user id (the token's sub); required")
	ttl := fs.Duration("ttl", time.Hour, "how long the token is valid")
	var sec secret
	sec.register(fs, "auth-secret", "HS256 secrets, comma-separated; the first one signs")
	// The iss and aud the services check, from the same variables.
	issuer := fs.String("auth-issuer", "", "the token's iss, for services run with --auth-issuer (empty: none)")
	audience := fs.String("auth-audience", "", "the token's aud, for services run with --auth-audience (empty: none)")
	if err := parseFlags(env, fs, args); err != nil {
		return err
	}
	if *user == "" {
		return usageError{"--user is required"}
	}
	secrets, err := sec.get()
	if err != nil {
		return err
	}
	first, _, _ := strings.Cut(secrets, ",")
	if first == "" {
		return usageError{"--auth-secret (KEEPWATCH_AUTH_SECRET) is required"}
	}
	if *ttl <= 0 {
		return usageError{"--ttl must be positive"}
	}
	tok, err := auth.MintFor(first, *user, *ttl, *issuer, *audience)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(env.stdout, tok)
	return err
}
