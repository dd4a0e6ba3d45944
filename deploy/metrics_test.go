package deploy_test

import "testing"

// exportedMetrics returns the metrics the services export. Until the command,
// flush and query services are built it is the contract's list, and says so.
func exportedMetrics(t *testing.T) *metricSet {
	t.Helper()
	return contractMetrics()
}
