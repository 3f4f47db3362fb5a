package consensus

import (
	"testing"
	"time"
)

func TestTimingValidate(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		name string
		t    Timing
		ok   bool
	}{
		{"zero takes the LAN defaults", Timing{}, true},
		{"LAN", LANTiming(), true},
		{"WAN", WANTiming(), true},
		{"tests' fast timing", Timing{300 * ms, 300 * ms, 150 * ms, 5 * ms}, true},
		{"a long heartbeat lifts the default election timeout", Timing{HeartbeatTimeout: 4 * time.Second}, true},
		{"hashicorp/raft's defaults", Timing{time.Second, time.Second, 500 * ms, 50 * ms}, true},
		{"negative", Timing{CommitTimeout: -ms}, false},
		{"heartbeat below the floor", Timing{HeartbeatTimeout: ms, ElectionTimeout: ms}, false},
		{"heartbeat above the ceiling", Timing{HeartbeatTimeout: time.Hour}, false},
		{"commit timeout below raft's floor", Timing{CommitTimeout: time.Microsecond}, false},
		{"election shorter than heartbeat", Timing{HeartbeatTimeout: 2 * time.Second, ElectionTimeout: time.Second}, false},
		{"lease longer than heartbeat", Timing{HeartbeatTimeout: time.Second, LeaderLeaseTimeout: 2 * time.Second}, false},
	} {
		err := tc.t.Validate()
		if (err == nil) != tc.ok {
			t.Errorf("%s: Validate(%+v) = %v, want ok=%v", tc.name, tc.t, err, tc.ok)
		}
	}
}

func TestTimingDefaults(t *testing.T) {
	got := Timing{HeartbeatTimeout: 4 * time.Second}.withDefaults()
	want := Timing{HeartbeatTimeout: 4 * time.Second, ElectionTimeout: 4 * time.Second, LeaderLeaseTimeout: 2 * time.Second, CommitTimeout: LANTiming().CommitTimeout}
	if got != want {
		t.Fatalf("withDefaults = %+v, want %+v", got, want)
	}
	if got := (Timing{}).withDefaults(); got != LANTiming() {
		t.Fatalf("zero Timing = %+v, want LANTiming %+v", got, LANTiming())
	}
}

// New refuses a configuration whose timing Raft would refuse or misuse.
func TestNewValidatesTiming(t *testing.T) {
	nd := &testNode{dir: t.TempDir(), host: newHost(t), sm: &listSM{}}
	t.Cleanup(func() { nd.host.Close() })
	cfg := fastConfig(nd)
	cfg.LeaderLeaseTimeout = 2 * cfg.HeartbeatTimeout
	if c, err := New(cfg); err == nil {
		c.Close()
		t.Fatal("New accepted a leader lease longer than the heartbeat timeout")
	}
}
