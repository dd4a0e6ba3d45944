// Package token mints the HS256 bearer tokens simulated players and frontends
// send, signed with the same secret as the service under test.
package token

import (
	"fmt"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Mint returns a token for user (claim sub) valid for ttl from now.
func Mint(secret, user string, ttl time.Duration) (string, error) {
	t := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": user,
		"exp": time.Now().Add(ttl).Unix(),
	})
	s, err := t.SignedString([]byte(secret))
	if err != nil {
		return "", fmt.Errorf("sign token for %s: %w", user, err)
	}
	return s, nil
}

// Pool mints tokens for users "PREFIX0" … "PREFIX(n-1)".
func Pool(secret, prefix string, n int, ttl time.Duration) ([]string, error) {
	out := make([]string, n)
	for i := range out {
		s, err := Mint(secret, fmt.Sprintf("%s%d", prefix, i), ttl)
		if err != nil {
			return nil, err
		}
		out[i] = s
	}
	return out, nil
}
