//go:build linux && !nodev

package main

import (
	"os/exec"
	"syscall"
)

// setParentDeathSignal makes the kernel send the child SIGTERM when keepwatch
// dies without stopping it (kill -9), so no redis-server is left holding the
// data directory. Its own process group keeps a terminal's Ctrl-C from
// reaching it directly: keepwatch stops it last, after its own services.
func setParentDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Setpgid: true}
}
