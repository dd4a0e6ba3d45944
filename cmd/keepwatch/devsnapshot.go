//go:build !nodev

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sort"

	"github.com/alicebob/miniredis/v2"
)

// snapshotFile holds the embedded server's data between runs.
const snapshotFile = "miniredis.json"

// snapshot is the embedded server's data: the buffer uses hashes and sorted
// sets only, and plain strings are kept for completeness. Any other type is
// refused rather than silently dropped.
type snapshot struct {
	Strings map[string]string             `json:"strings,omitempty"`
	Hashes  map[string]map[string]string  `json:"hashes,omitempty"`
	ZSets   map[string]map[string]float64 `json:"zsets,omitempty"`
}

// saveSnapshot writes m's data to path through a temporary file, so a crash
// while saving leaves the previous snapshot intact.
func saveSnapshot(m *miniredis.Miniredis, path string) error {
	s := snapshot{Strings: map[string]string{}, Hashes: map[string]map[string]string{}, ZSets: map[string]map[string]float64{}}
	keys := m.Keys()
	sort.Strings(keys)
	for _, k := range keys {
		switch t := m.Type(k); t {
		case "string":
			v, err := m.Get(k)
			if err != nil {
				return fmt.Errorf("snapshot %s: %w", k, err)
			}
			s.Strings[k] = v
		case "hash":
			fields, err := m.HKeys(k)
			if err != nil {
				return fmt.Errorf("snapshot %s: %w", k, err)
			}
			h := make(map[string]string, len(fields))
			for _, f := range fields {
				h[f] = m.HGet(k, f)
			}
			s.Hashes[k] = h
		case "zset":
			members, err := m.ZMembers(k)
			if err != nil {
				return fmt.Errorf("snapshot %s: %w", k, err)
			}
			z := make(map[string]float64, len(members))
			for _, mem := range members {
				if z[mem], err = m.ZScore(k, mem); err != nil {
					return fmt.Errorf("snapshot %s: %w", k, err)
				}
			}
			s.ZSets[k] = z
		default:
			return fmt.Errorf("snapshot %s: type %q is not supported", k, t)
		}
	}
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("save snapshot: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("save snapshot: %w", err)
	}
	return nil
}

// loadSnapshot fills m from path; a missing file is an empty server.
func loadSnapshot(m *miniredis.Miniredis, path string) error {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load snapshot: %w", err)
	}
	var s snapshot
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("load snapshot %s: %w", path, err)
	}
	for k, v := range s.Strings {
		if err := m.Set(k, v); err != nil {
			return fmt.Errorf("load snapshot %s: %w", k, err)
		}
	}
	for k, h := range s.Hashes {
		for f, v := range h {
			m.HSet(k, f, v)
		}
	}
	for k, z := range s.ZSets {
		for mem, score := range z {
			if _, err := m.ZAdd(k, score, mem); err != nil {
				return fmt.Errorf("load snapshot %s: %w", k, err)
			}
		}
	}
	return nil
}
