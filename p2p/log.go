package p2p

import (
	logging "github.com/ipfs/go-log/v2"
	"github.com/libp2p/go-libp2p/gologshim"
)

func init() {
	// go-libp2p logs through slog. Route it into go-log so one set of
	// GOLOG_* variables (and logging.SetLogLevel) governs the whole process.
	gologshim.SetDefaultHandler(logging.SlogHandler())
}
