// Package testkit holds what the tests of every p2pkey package share:
// waiting for an observable condition. It is imported by tests only.
//
// A test never sleeps to let something happen: it names the condition that
// shows it happened and waits for it, with a deadline and a message that
// says what did not happen.
package testkit

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// Interval is how often WaitFor and Poll check their condition.
const Interval = 20 * time.Millisecond

// WaitFor checks cond every Interval until it holds, and fails tb with
// "timed out after TIMEOUT waiting for WHAT" once timeout has passed.
func WaitFor(tb testing.TB, what string, timeout time.Duration, cond func() bool) {
	tb.Helper()
	if err := Poll(timeout, func() (bool, string) { return cond(), "" }); err != nil {
		tb.Fatalf("%v waiting for %s", err, what)
	}
}

// Poll checks cond every Interval until it holds, and returns an error
// naming the last state cond described once timeout has passed.
func Poll(timeout time.Duration, cond func() (ok bool, state string)) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(Interval)
	defer tick.Stop()
	for {
		ok, state := cond()
		if ok {
			return nil
		}
		select {
		case <-deadline.C:
			if state != "" {
				return fmt.Errorf("timed out after %v (last: %s)", timeout, state)
			}
			return fmt.Errorf("timed out after %v", timeout)
		case <-tick.C:
		}
	}
}

// ErrorSays reports whether err's message, the text a user reads, contains
// phrase. It is for checking wording only: a test checks what an error is
// with errors.Is, never with its text.
func ErrorSays(err error, phrase string) bool {
	return err != nil && strings.Contains(err.Error(), phrase)
}
