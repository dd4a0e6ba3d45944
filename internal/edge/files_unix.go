//go:build unix

package edge

import "syscall"

// FileLimit returns the process's open-file limit (RLIMIT_NOFILE's soft
// limit), 0 when it cannot be read. Go's syscall package already raised the
// soft limit to the hard one when the process started (Go 1.19 and later),
// so this is as high as the process can go without privileges.
func FileLimit() uint64 {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil || r.Cur > 1<<40 { // unlimited: nothing to fit in
		return 0
	}
	return r.Cur
}
