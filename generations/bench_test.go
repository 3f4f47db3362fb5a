package generations

import (
	"fmt"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// membersOnly bootstraps n members (direct admission) with no generation.
func membersOnly(tb testing.TB, n int) (*harness, []peer.ID) {
	h := newHarness(tb)
	ks := keys(tb, n)
	h.must(NewBootstrap(testCluster, ks[0].id, h.tick()))
	for i := 1; i < n; i++ {
		h.must(NewAddInvite(inviteHash(i), invitePub(i), h.now.Add(time.Hour), ks[0].id, h.tick()))
		h.must(NewConsumeInvite(inviteHash(i), ks[i].id, testCluster, time.Time{}, h.tick()))
	}
	return h, h.l.Active()
}

// BenchmarkRecordReceipts applies full generations of receipts, one batch
// per owner (|M| receipts each), signature checks included.
func BenchmarkRecordReceipts(b *testing.B) {
	for _, n := range []int{25, 99} {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			h, ids := membersOnly(b, n)
			h.must(NewOpenGeneration(h.now.Add(time.Hour), h.tick()))
			base, err := h.l.Snapshot()
			if err != nil {
				b.Fatal(err)
			}
			batches := make([][]byte, 0, n)
			for _, o := range ids {
				var rs []Receipt
				for _, hd := range ids {
					rs = append(rs, signed(b, testCluster, 1, o, hd, digestOf(1, o, hd)))
				}
				cmd := NewRecordReceipts(rs, h.tick())
				h.sign(cmd, o)
				enc, err := EncodeCommand(cmd)
				if err != nil {
					b.Fatal(err)
				}
				batches = append(batches, enc)
			}
			l := New()
			if err := l.Restore(base); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			var paused time.Duration
			for i := 0; i < b.N; i++ {
				k := i % n
				if k == 0 && i > 0 {
					b.StopTimer()
					p := time.Now()
					_ = l.Restore(base)
					paused += time.Since(p)
					b.StartTimer()
				}
				if _, err := l.Apply(h.now.UnixNano(), batches[k]); err != nil {
					b.Fatal(err)
				}
			}
			elapsed := time.Since(start) - paused
			b.ReportMetric(float64(b.N*n)/elapsed.Seconds(), "receipts/s")
		})
	}
}

// BenchmarkSnapshotSize reports the snapshot of a cluster whose current
// generation has every receipt, and what one such generation adds.
func BenchmarkSnapshotSize(b *testing.B) {
	for _, n := range []int{5, 25, 99} {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			h, ids := membersOnly(b, n)
			h.must(NewOpenGeneration(h.now.Add(time.Hour), h.tick()))
			empty, err := h.l.Snapshot()
			if err != nil {
				b.Fatal(err)
			}
			for i := 0; i < len(ids); i += 8 {
				var rs []Receipt
				for _, o := range ids[i:min(i+8, len(ids))] {
					for _, hd := range ids {
						rs = append(rs, signed(b, testCluster, 1, o, hd, digestOf(1, o, hd)))
					}
				}
				h.must(NewRecordReceipts(rs, h.tick()))
			}
			var snap []byte
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if snap, err = h.l.Snapshot(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(snap)), "snapshot-bytes")
			b.ReportMetric(float64(len(snap)-len(empty)), "bytes/generation")
			b.ReportMetric(float64(len(snap)-len(empty))/float64(n*n), "bytes/receipt")
		})
	}
}
