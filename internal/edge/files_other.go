//go:build !unix

package edge

// FileLimit returns 0: there is no open-file limit to read on this system.
func FileLimit() uint64 { return 0 }
