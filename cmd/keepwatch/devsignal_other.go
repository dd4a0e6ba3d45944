//go:build !linux

package devenv

import "os/exec"

// setParentDeathSignal has no portable equivalent outside Linux; a clean stop
// still stops the child.
func setParentDeathSignal(*exec.Cmd) {}
