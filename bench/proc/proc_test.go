package proc

import (
	"os"
	"syscall"
	"testing"
	"time"
)

// selfCPU is this process' CPU time as the kernel's getrusage counts it: the
// reference ReadUsage's /proc figures must agree with.
func selfCPU(t *testing.T) time.Duration {
	t.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestReadUsageFollowsCPUAndMemory burns a known amount of CPU and touches a
// known amount of memory, and checks that ReadUsage sees both: its CPU figure
// must grow by what getrusage says was spent (to within /proc's 10 ms ticks),
// and resident memory by most of what was touched.
func TestReadUsageFollowsCPUAndMemory(t *testing.T) {
	pid := os.Getpid()
	before, err := ReadUsage(pid)
	if err != nil {
		t.Fatal(err)
	}
	ref0 := selfCPU(t)
	const burn = 300 * time.Millisecond
	x := 0
	for selfCPU(t)-ref0 < burn {
		for i := range 100_000 {
			x += i ^ x
		}
	}
	spent := selfCPU(t) - ref0
	// Fresh pages from the kernel: Go's heap may already hold resident
	// memory it would reuse.
	const touched = 64 << 20
	mem, err := syscall.Mmap(-1, 0, touched, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = syscall.Munmap(mem) }()
	for i := 0; i < len(mem); i += 4096 {
		mem[i] = byte(i + x)
	}
	after, err := ReadUsage(pid)
	if err != nil {
		t.Fatal(err)
	}
	grew := after.CPU - before.CPU
	if slack := 50 * time.Millisecond; grew < spent-slack || grew > spent+slack+time.Duration(len(mem)/4096)*time.Microsecond {
		t.Errorf("CPU grew by %s while getrusage counted %s spent", grew, spent)
	}
	if d := after.RSS - before.RSS; d < touched*3/4 {
		t.Errorf("RSS grew by %d bytes after touching %d", d, touched)
	}
	if mem[4096] == 1 && x == 0 { // keep mem and x alive past ReadUsage
		t.Log()
	}
}
