package opsweb_test

import (
	"flag"
	"os"
	"testing"

	logging "github.com/ipfs/go-log/v2"
)

// TestMain keeps the nodes' logs (ERROR lines when a node is stopped on
// purpose) out of the test output unless -v is given.
func TestMain(m *testing.M) {
	flag.Parse()
	if !testing.Verbose() && os.Getenv("GOLOG_LOG_LEVEL") == "" {
		logging.SetAllLoggers(logging.LevelFatal)
	}
	os.Exit(m.Run())
}
