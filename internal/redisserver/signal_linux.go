package redisserver

import (
	"os/exec"
	"syscall"
)

// setStopWithParent makes the kernel send the child SIGTERM when its parent
// dies without stopping it (kill -9), so no redis-server is left holding a
// data directory; its own process group keeps a terminal's Ctrl-C from
// reaching it directly.
func setStopWithParent(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Setpgid: true}
}
