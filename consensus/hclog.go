package consensus

import (
	"fmt"
	"io"
	stdlog "log"

	"github.com/hashicorp/go-hclog"
	logging "github.com/ipfs/go-log/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// hcLogger adapts go-log/v2 to hclog for hashicorp/raft. Unlike
// go-libp2p-raft's adapter it checks the level before it formats anything, so
// the heartbeat chatter Raft logs at debug and trace costs nothing when those
// levels are off.
type hcLogger struct {
	name string
	z    *zap.SugaredLogger
	core zapcore.Core
	args []any
}

func newHCLogger(l *logging.ZapEventLogger, args ...any) hclog.Logger {
	return &hcLogger{name: "raft", z: l.SugaredLogger.With(args...), core: l.Desugar().Core()}
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
		l.Info(string(p))
		return len(p), nil
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
