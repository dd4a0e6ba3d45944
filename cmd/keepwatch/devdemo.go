//go:build !nodev

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/oklog/run"

	playersdk "github.com/keepwatch/keepwatch/sdk/js"
)

// devDemo is the page `keepwatch dev` serves on --demo-addr: a video tracked
// by the player SDK beside the keep-watching row it feeds. The page is handed
// the development token, so only dev serves it, on an address of its own:
// `keepwatch command` and `keepwatch query` never do. A nil *devDemo is no
// demo (--demo-addr empty); its methods do nothing.
type devDemo struct {
	ln   net.Listener
	host string // as configured, so the banner says localhost when that was asked
	srv  *http.Server
}

// demoPage is what the page reads from /config.json.
type demoPage struct {
	CommandURL string `json:"commandUrl"`
	QueryURL   string `json:"queryUrl"`
	Token      string `json:"token"`
	User       string `json:"user"`
}

// listenDemo listens on addr before anything else starts, so the APIs can be
// told the page's origin; with addr empty there is no demo.
func listenDemo(addr string) (*devDemo, error) {
	if addr == "" {
		return nil, nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, usageError{fmt.Sprintf("--demo-addr %q: %v", addr, err)}
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on --demo-addr %s: %w", addr, err)
	}
	return &devDemo{ln: ln, host: host}, nil
}

func (d *devDemo) port() string {
	_, port, _ := net.SplitHostPort(d.ln.Addr().String())
	return port
}

// hosts are the names a browser may reach the page by.
func (d *devDemo) hosts() []string {
	switch d.host {
	case "", "0.0.0.0", "::", "localhost", "127.0.0.1", "::1":
		return []string{"localhost", "127.0.0.1", "[::1]"}
	}
	if strings.Contains(d.host, ":") {
		return []string{"[" + d.host + "]"}
	}
	return []string{d.host}
}

// URL is where a browser opens the page ("" without a demo).
func (d *devDemo) URL() string {
	if d == nil {
		return ""
	}
	return "http://" + d.hosts()[0] + ":" + d.port()
}

// Origins are the page's origins, comma-separated, for the APIs' --cors-origins.
func (d *devDemo) Origins() string {
	if d == nil {
		return ""
	}
	var o []string
	for _, h := range d.hosts() {
		o = append(o, "http://"+h+":"+d.port())
	}
	return strings.Join(o, ",")
}

// Serve adds the page's server to g.
func (d *devDemo) Serve(g *run.Group, page demoPage) error {
	if d == nil {
		return nil
	}
	h, err := d.handler(page)
	if err != nil {
		return err
	}
	d.srv = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	g.Add(func() error {
		if err := d.srv.Serve(d.ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("demo page: %w", err)
		}
		return nil
	}, func(error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = d.srv.Shutdown(ctx)
	})
	return nil
}

// Close releases the listener of a demo that was never served (dev failed
// to start).
func (d *devDemo) Close() {
	if d != nil && d.srv == nil {
		_ = d.ln.Close()
	}
}

func (d *devDemo) handler(page demoPage) (http.Handler, error) {
	files, err := fs.Sub(playersdk.Files, "demo")
	if err != nil {
		return nil, fmt.Errorf("demo files: %w", err)
	}
	cfg, err := json.Marshal(page)
	if err != nil {
		return nil, fmt.Errorf("demo config: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /", http.FileServerFS(files))
	for _, name := range []string{"keepwatch.js", "keepwatch.d.ts"} {
		mux.HandleFunc("GET /"+name, func(w http.ResponseWriter, r *http.Request) {
			http.ServeFileFS(w, r, playersdk.Files, name)
		})
	}
	mux.HandleFunc("GET /clip.webm", func(w http.ResponseWriter, r *http.Request) {
		// Not left to the system's mime.types, some of which say audio/webm.
		w.Header().Set("Content-Type", "video/webm")
		http.ServeFileFS(w, r, files, "clip.webm")
	})
	mux.HandleFunc("GET /config.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write(cfg)
	})
	// The page hands out a token: answer only requests addressed to this
	// server by its own names, so another site cannot read it through a
	// DNS name it points at 127.0.0.1 (DNS rebinding).
	allowed := map[string]bool{}
	for _, h := range d.hosts() {
		allowed[h+":"+d.port()] = true
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !allowed[r.Host] {
			http.Error(w, "unknown host "+r.Host+": open "+d.URL(), http.StatusMisdirectedRequest)
			return
		}
		mux.ServeHTTP(w, r)
	}), nil
}
