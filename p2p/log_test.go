package p2p

import (
	"context"
	"log/slog"
	"sync"
	"testing"
)

// recordingHandler keeps the records it handles, at or above min.
type recordingHandler struct {
	min slog.Level
	mu  *sync.Mutex
	got *[]slog.Record
}

func (h recordingHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.min }
func (h recordingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	*h.got = append(*h.got, r)
	return nil
}
func (h recordingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h recordingHandler) WithGroup(string) slog.Handler      { return h }

// TestQuietHandler: go-libp2p's routine identify failures come out at
// DEBUG (or not at all when DEBUG is off); other warnings stay WARN.
func TestQuietHandler(t *testing.T) {
	for _, min := range []slog.Level{slog.LevelDebug, slog.LevelInfo} {
		var got []slog.Record
		log := slog.New(quietHandler{recordingHandler{min: min, mu: &sync.Mutex{}, got: &got}}).With("logger", "net/identify")
		log.Warn("failed to identify peer", "peer", "x")
		log.Warn("error reading identify message", "err", "stream reset")
		log.Warn("something else")
		want := map[string]slog.Level{"something else": slog.LevelWarn}
		if min == slog.LevelDebug {
			want["error reading identify message"] = slog.LevelDebug
		}
		if min == slog.LevelDebug {
			want["failed to identify peer"] = slog.LevelDebug
		}
		n := 0
		for _, r := range got {
			if lvl, ok := want[r.Message]; !ok || lvl != r.Level {
				t.Fatalf("min %v: %q logged at %v", min, r.Message, r.Level)
			}
			n++
		}
		if n != len(want) {
			t.Fatalf("min %v: %d records, want %d: %+v", min, n, len(want), got)
		}
	}
}
