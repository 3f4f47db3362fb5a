package shares

import (
	"cmp"
	"context"
	"os"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/time/rate"

	"github.com/p2pkey/p2pkey/shares/pb"
)

// BenchmarkPushFetch measures one push (with its receipt) and one fetch
// between two hosts on loopback TCP, and the bytes of the share protocol's
// messages for one push and its receipt (framing included; the libp2p
// stream's multistream and muxer overhead is not counted).
func BenchmarkPushFetch(b *testing.B) {
	owner := newTestNode(b, testCluster)
	holder := newTestNode(b, testCluster, WithFetchRateLimit(rate.Inf, 1))
	connect(b, owner, holder)
	// Each push is to a new generation, and every generation is open.
	holder.policy.set(func(p *testPolicy) { p.allOpen = true })
	share := make([]byte, 34)
	envs := make([]*Envelope, b.N)
	for i := range envs {
		envs[i] = owner.seal(holder.id, uint64(i+1), share)
	}
	ctx := context.Background()
	push := make([]time.Duration, 0, b.N)
	fetch := make([]time.Duration, 0, b.N)
	var wire int
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		r, err := owner.svc.Push(ctx, holder.id, envs[i])
		if err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if _, err := owner.svc.Fetch(ctx, holder.id, uint64(i+1)); err != nil {
			b.Fatal(err)
		}
		push = append(push, t1.Sub(t0))
		fetch = append(fetch, time.Since(t1))
		if i == 0 {
			raw, _ := envs[0].MarshalBinary()
			wire = len(framed(pushRequest(testCluster, 1, raw))) +
				len(framed(&pb.Response{Version: WireVersion, ClusterId: testCluster, Code: pb.Response_OK,
					ReceiptSignature: r.Signature, Digest: r.Digest[:]}))
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(percentile(push, 50).Microseconds()), "push-p50-µs")
	b.ReportMetric(float64(percentile(push, 99).Microseconds()), "push-p99-µs")
	b.ReportMetric(float64(percentile(fetch, 50).Microseconds()), "fetch-p50-µs")
	b.ReportMetric(float64(wire), "wire-B/push")
}

func percentile(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[(len(s)-1)*p/100]
}

// BenchmarkDeleteErase measures one Delete of a store of 100 envelopes,
// with the rewrite that erases it from the disk (compaction into a fresh
// file, fsyncs, rename, zeroing of the old file), then puts the envelope
// back, untimed. bbolt-delete-µs is the same delete without the rewrite,
// for comparison.
func BenchmarkDeleteErase(b *testing.B) {
	f := newStoreFixture(b, 34) // 3 owners x 34 generations: 102 envelopes
	keys := make([]Key, 0, len(f.envs))
	for k := range f.envs {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(x, y Key) int { return cmp.Compare(x.Generation, y.Generation) })
	var bare time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		k := keys[i%len(keys)]
		if err := f.s.Delete(k.Generation, k.Owner); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := f.s.Put(k.Generation, k.Owner, f.envs[k]); err != nil {
			b.Fatal(err)
		}
		// The bbolt delete alone, as before erasure.
		t0 := time.Now()
		if err := f.s.view(func(db *bolt.DB) error {
			return db.Update(func(tx *bolt.Tx) error {
				return tx.Bucket(bucketEnvelopes).Delete(encodeKey(k.Generation, k.Owner))
			})
		}); err != nil {
			b.Fatal(err)
		}
		bare += time.Since(t0)
		if err := f.s.Put(k.Generation, k.Owner, f.envs[k]); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.StopTimer()
	fi, _ := os.Stat(f.path)
	b.ReportMetric(float64(bare.Microseconds())/float64(b.N), "bbolt-delete-µs")
	b.ReportMetric(float64(fi.Size())/1024, "store-KiB")
}
