package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
	"github.com/p2pkey/p2pkey/node"
)

// systemd speaks the service manager's notify protocol (Type=notify) when
// $NOTIFY_SOCKET is set, and does nothing otherwise:
//   - READY=1 once the node's key is unlocked, not before, so that a unit
//     ordered After=p2pkey.service gets its keys on the first try;
//   - STATUS= whenever the lock line changes ("locked: 1 of 2 shares for
//     generation 4, waiting on 12D3KooW…");
//   - WATCHDOG=1 every half of $WATCHDOG_USEC (WatchdogSec= in the unit),
//     from the same loop that watches the lock, so a daemon whose loop
//     stalls is restarted;
//   - STOPPING=1 when it shuts down.
type systemd struct {
	on   bool
	errw io.Writer
}

// lockPoll is how often the lock line is read before READY: a short period
// keeps READY close to the unlock. Afterwards STATUS only informs, and
// readyPoll keeps the idle daemon's cost down.
const (
	lockPoll  = 200 * time.Millisecond
	readyPoll = 2 * time.Second
)

func newSystemd(errw io.Writer) *systemd {
	return &systemd{on: os.Getenv("NOTIFY_SOCKET") != "", errw: errw}
}

func (s *systemd) notify(state string) {
	if !s.on {
		return
	}
	if _, err := sd.SdNotify(false, state); err != nil {
		fmt.Fprintf(s.errw, "p2pkey: systemd notify: %v\n", err)
	}
}

// status sends a STATUS= line.
func (s *systemd) status(line string) { s.notify("STATUS=" + line) }

// stopping says the daemon is shutting down, and why.
func (s *systemd) stopping(why string) { s.notify("STOPPING=1\nSTATUS=" + why) }

// watch sends STATUS= lines, READY=1 once the node is unlocked, and the
// watchdog's pings, until ctx is done; the channel it returns is closed then.
func (s *systemd) watch(ctx context.Context, n *node.Node) <-chan struct{} {
	done := make(chan struct{})
	if !s.on {
		close(done)
		return done
	}
	var dog <-chan time.Time
	var dogTicker *time.Ticker
	if every, err := sd.SdWatchdogEnabled(false); err != nil {
		fmt.Fprintf(s.errw, "p2pkey: systemd watchdog: %v\n", err)
	} else if every > 0 {
		dogTicker = time.NewTicker(every / 2)
		dog = dogTicker.C
		s.notify("WATCHDOG=1")
	}
	go func() {
		defer close(done)
		if dogTicker != nil {
			defer dogTicker.Stop()
		}
		poll := time.NewTicker(lockPoll)
		defer poll.Stop()
		ready := false
		last := ""
		for {
			state, _ := n.LockState()
			line := n.LockSummary()
			switch {
			case !ready && state == node.LockUnlocked:
				ready = true
				last = line
				s.notify("READY=1\nSTATUS=" + line)
				poll.Reset(readyPoll)
			case line != last:
				last = line
				s.status(line)
			}
			select {
			case <-ctx.Done():
				return
			case <-dog:
				s.notify("WATCHDOG=1")
			case <-poll.C:
			}
		}
	}()
	return done
}
