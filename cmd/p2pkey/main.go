// Command p2pkey runs and controls a p2pkey node. It only parses flags: the
// daemon is package node, and every other command talks to a running daemon
// over the unix socket in the data directory.
package main

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
)

// Exit statuses.
const (
	exitOK     = 0
	exitError  = 1
	exitUsage  = 2
	exitLocked = 3
)

// exitError carries an exit status out of a command.
type statusError struct {
	code int
	err  error
}

func (e *statusError) Error() string { return e.err.Error() }
func (e *statusError) Unwrap() error { return e.err }

// defaultGCPercent is the garbage collector's target when GOGC is not set:
// a daemon's heap is small and mostly idle, and collecting at 50% growth
// instead of 100% keeps its headroom small at no measurable CPU cost
// (issue 13, bench/idle).
const defaultGCPercent = 50

func main() {
	if err := harden(); err != nil {
		fmt.Fprintf(os.Stderr, "p2pkey: cannot keep key material out of core dumps: %v\n", err)
		os.Exit(exitError)
	}
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
	root := newRootCmd()
	err := root.Execute()
	if err == nil {
		os.Exit(exitOK)
	}
	fmt.Fprintf(os.Stderr, "p2pkey: %v\n", err)
	var se *statusError
	if errors.As(err, &se) {
		os.Exit(se.code)
	}
	os.Exit(exitError)
}
