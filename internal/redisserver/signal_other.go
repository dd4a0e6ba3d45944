//go:build !linux

package redisserver

import (
	"os/exec"
	"syscall"
)

// setStopWithParent has no portable parent-death signal outside Linux; the
// process group still keeps Ctrl-C off the child, and a clean stop stops it.
func setStopWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
}
