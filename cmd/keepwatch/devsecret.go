//go:build !nodev

package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// devSecretFile is the name of the development auth secret in the data directory.
const devSecretFile = "auth-secret"

// loadOrCreateSecret returns the development HS256 secret kept in dir,
// creating a random one the first time, so that tokens minted by one run are
// still valid after a restart. created tells whether it was just made.
func loadOrCreateSecret(dir string) (secret string, created bool, err error) {
	path := filepath.Join(dir, devSecretFile)
	b, err := os.ReadFile(path)
	if err == nil {
		s := strings.TrimSpace(string(b))
		if s == "" {
			return "", false, fmt.Errorf("auth secret %s is empty: delete it to make a new one", path)
		}
		return s, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", false, fmt.Errorf("read auth secret: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", false, fmt.Errorf("data directory: %w", err)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", false, fmt.Errorf("make auth secret: %w", err)
	}
	s := hex.EncodeToString(raw)
	// O_EXCL: two dev processes starting at once must not each write a secret.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return loadOrCreateSecret(dir)
	}
	if err != nil {
		return "", false, fmt.Errorf("write auth secret: %w", err)
	}
	if _, err := f.WriteString(s + "\n"); err != nil {
		_ = f.Close()
		return "", false, fmt.Errorf("write auth secret: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", false, fmt.Errorf("write auth secret: %w", err)
	}
	return s, true, nil
}
