package testkit

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestPoll(t *testing.T) {
	var n atomic.Int32
	if err := Poll(time.Second, func() (bool, string) { return n.Add(1) >= 3, "" }); err != nil {
		t.Fatal(err)
	}
	if n.Load() != 3 {
		t.Fatalf("checked %d times, want 3", n.Load())
	}
	err := Poll(3*Interval, func() (bool, string) { return false, "still 0" })
	if err == nil || !ErrorSays(err, "timed out after") || !ErrorSays(err, "still 0") {
		t.Fatalf("Poll of a condition that never holds: %v", err)
	}
}
