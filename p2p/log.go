package p2p

import (
	"context"
	"log/slog"

	logging "github.com/ipfs/go-log/v2"
	"github.com/libp2p/go-libp2p/gologshim"
)

func init() {
	// go-libp2p logs through slog. Route it into go-log so one set of
	// GOLOG_* variables (and logging.SetLogLevel) governs the whole process.
	gologshim.SetDefaultHandler(quietHandler{logging.SlogHandler()})
}

// demoted lists go-libp2p's WARN lines that are routine in a running
// cluster, with the level they are logged at instead. Identify fails
// whenever a connection closes while the peers are still exchanging their
// identify messages: at every shutdown, restart and connection trim.
var demoted = map[string]slog.Level{
	"failed to identify peer":        slog.LevelDebug,
	"error reading identify message": slog.LevelDebug,
}

// quietHandler logs the records named in demoted at their lower level
// (dropping them when that level is off), and every other record as it is.
type quietHandler struct{ slog.Handler }

// Handle implements slog.Handler.
func (h quietHandler) Handle(ctx context.Context, r slog.Record) error {
	if lvl, ok := demoted[r.Message]; ok && r.Level > lvl {
		if !h.Handler.Enabled(ctx, lvl) {
			return nil
		}
		r.Level = lvl
	}
	return h.Handler.Handle(ctx, r)
}

// WithAttrs implements slog.Handler.
func (h quietHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return quietHandler{h.Handler.WithAttrs(attrs)}
}

// WithGroup implements slog.Handler.
func (h quietHandler) WithGroup(name string) slog.Handler {
	return quietHandler{h.Handler.WithGroup(name)}
}
