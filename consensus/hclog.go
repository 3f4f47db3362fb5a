package consensus

import (
	"fmt"
	"io"
	stdlog "log"
	"strings"

	"github.com/hashicorp/go-hclog"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// hcLogger adapts go-log/v2 to hclog for hashicorp/raft, so every line Raft
// logs goes through go-log (GOLOG_LOG_FMT=json included). Unlike
// go-libp2p-raft's adapter it checks the level before it formats anything,
// so the heartbeat chatter Raft logs at debug and trace costs nothing when
// those levels are off; and it logs what Raft reports in normal operation
// below WARN (see raftLevels).
type hcLogger struct {
	name string
	z    *zap.SugaredLogger
	core zapcore.Core
	args []any
}

func newHCLogger(z *zap.SugaredLogger, args ...any) hclog.Logger {
	return &hcLogger{name: "raft", z: z.With(args...), core: z.Desugar().Core()}
}

// raftLevels is the level this adapter logs some of hashicorp/raft's
// messages at, below the one Raft chose: each is what Raft says in normal
// operation, when a member stops, restarts, joins or is behind, or when this
// node shuts down. None is raised; a message not listed keeps its level.
var raftLevels = map[string]hclog.Level{
	// A member that stops: the leader tries it on every heartbeat and
	// every append. The contact log says it once, at INFO, when the
	// member goes and when it is back (see contactLog).
	"failed to heartbeat to":                  hclog.Debug,
	"failed to appendEntries to":              hclog.Debug,
	"failed to pipeline appendEntries":        hclog.Debug,
	"failed to start pipeline replication to": hclog.Debug,
	"failed to send snapshot to":              hclog.Debug,
	"failed to contact":                       hclog.Debug,
	// A new or returning follower is behind the leader's log: the leader
	// walks back to where they agree, as Raft is meant to.
	"failed to get previous log":                 hclog.Debug,
	"previous log term mis-match":                hclog.Debug,
	"appendEntries rejected, sending older logs": hclog.Debug,
	"skipping application of old log":            hclog.Debug,
	// A node that is not a voter yet (a joiner) or not yet configured.
	"no known peers, aborting election":                   hclog.Debug,
	"not part of stable configuration, aborting election": hclog.Debug,
	"heartbeat timeout reached, not part of a stable configuration or a non-voter, not triggering a leader election": hclog.Debug,
	// Elections after a leader stops or a member restarts.
	"failed to make requestVote RPC":                                hclog.Debug, // a candidate cannot reach a stopped member
	"heartbeat timeout reached, starting election":                  hclog.Info,
	"Election timeout reached, restarting election":                 hclog.Info,
	"new leader elected, stepping down":                             hclog.Info,
	"peer has newer term, stopping replication":                     hclog.Info,
	"rejecting vote request since we have a leader":                 hclog.Debug,
	"rejecting vote request since our last term is greater":         hclog.Debug,
	"rejecting vote request since our last index is greater":        hclog.Debug,
	"rejecting vote request since node is not in configuration":     hclog.Debug,
	"rejecting vote request since node is not a voter":              hclog.Debug,
	"duplicate requestVote from":                                    hclog.Debug,
	"rejecting pre-vote request since we have a leader":             hclog.Debug,
	"rejecting pre-vote request since our last term is greater":     hclog.Debug,
	"rejecting pre-vote request since our last index is greater":    hclog.Debug,
	"rejecting pre-vote request since node is not in configuration": hclog.Debug,
	"rejecting pre-vote request since node is not a voter":          hclog.Debug,
}

// levelOf is the level msg is logged at: Raft's, or lower (raftLevels).
func levelOf(level hclog.Level, msg string) hclog.Level {
	if level <= hclog.Debug {
		return level // the per-RPC chatter: nothing to lower, no lookup
	}
	if lv, ok := raftLevels[msg]; ok && lv < level {
		return lv
	}
	return level
}

func (l *hcLogger) enabled(level hclog.Level) bool {
	switch level {
	case hclog.Trace, hclog.Debug:
		return l.core.Enabled(zapcore.DebugLevel)
	case hclog.Info, hclog.NoLevel, hclog.DefaultLevel:
		return l.core.Enabled(zapcore.InfoLevel)
	case hclog.Warn:
		return l.core.Enabled(zapcore.WarnLevel)
	case hclog.Error:
		return l.core.Enabled(zapcore.ErrorLevel)
	}
	return false
}

func (l *hcLogger) Log(level hclog.Level, msg string, args ...any) {
	level = levelOf(level, msg)
	if !l.enabled(level) {
		return
	}
	for i, a := range args {
		if f, ok := a.(hclog.Format); ok && len(f) > 0 {
			if format, ok := f[0].(string); ok {
				args[i] = fmt.Sprintf(format, f[1:]...)
			}
		}
	}
	switch level {
	case hclog.Trace, hclog.Debug:
		l.z.Debugw(msg, args...)
	case hclog.Warn:
		l.z.Warnw(msg, args...)
	case hclog.Error:
		l.z.Errorw(msg, args...)
	default:
		l.z.Infow(msg, args...)
	}
}

func (l *hcLogger) Trace(msg string, args ...any) { l.Log(hclog.Trace, msg, args...) }
func (l *hcLogger) Debug(msg string, args ...any) { l.Log(hclog.Debug, msg, args...) }
func (l *hcLogger) Info(msg string, args ...any)  { l.Log(hclog.Info, msg, args...) }
func (l *hcLogger) Warn(msg string, args ...any)  { l.Log(hclog.Warn, msg, args...) }
func (l *hcLogger) Error(msg string, args ...any) { l.Log(hclog.Error, msg, args...) }
func (l *hcLogger) IsTrace() bool                 { return l.enabled(hclog.Trace) }
func (l *hcLogger) IsDebug() bool                 { return l.enabled(hclog.Debug) }
func (l *hcLogger) IsInfo() bool                  { return l.enabled(hclog.Info) }
func (l *hcLogger) IsWarn() bool                  { return l.enabled(hclog.Warn) }
func (l *hcLogger) IsError() bool                 { return l.enabled(hclog.Error) }
func (l *hcLogger) ImpliedArgs() []any            { return l.args }
func (l *hcLogger) Name() string                  { return l.name }
func (l *hcLogger) SetLevel(hclog.Level)          {}

func (l *hcLogger) GetLevel() hclog.Level {
	for _, lv := range []hclog.Level{hclog.Debug, hclog.Info, hclog.Warn, hclog.Error} {
		if l.enabled(lv) {
			return lv
		}
	}
	return hclog.Off
}

func (l *hcLogger) With(args ...any) hclog.Logger {
	c := *l
	c.z = l.z.With(args...)
	c.args = append(append([]any(nil), l.args...), args...)
	return &c
}

func (l *hcLogger) Named(name string) hclog.Logger {
	c := *l
	c.name = l.name + "." + name
	c.z = l.z.Named(name)
	return &c
}

func (l *hcLogger) ResetNamed(name string) hclog.Logger {
	c := *l
	c.name = name
	return &c
}

func (l *hcLogger) StandardLogger(*hclog.StandardLoggerOptions) *stdlog.Logger {
	return stdlog.New(l.StandardWriter(nil), "", 0)
}

func (l *hcLogger) StandardWriter(*hclog.StandardLoggerOptions) io.Writer {
	return writerFunc(func(p []byte) (int, error) {
		l.Info(strings.TrimRight(string(p), "\n"))
		return len(p), nil
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
