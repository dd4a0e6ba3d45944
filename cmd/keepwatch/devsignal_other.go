//go:build !linux && !nodev

package main

import "os/exec"

// setParentDeathSignal has no portable equivalent outside Linux; a clean stop
// still stops the child.
func setParentDeathSignal(*exec.Cmd) {}
