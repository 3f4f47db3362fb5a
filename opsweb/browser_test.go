package opsweb_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	cdpruntime "github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/p2pkey/p2pkey/internal/testkit"
)

// browser starts Debian's chromium headless, or skips the test when it is
// not installed (.ci/run installs it).
func browser(t *testing.T) context.Context {
	t.Helper()
	var path string
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		t.Skip("chromium is not installed (apt-get install chromium); the status page's browser test needs it")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.WindowSize(1100, 1000),
		chromedp.UserDataDir(t.TempDir()),
	)
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelA)
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	t.Cleanup(cancel)
	ctx, cancelT := context.WithTimeout(ctx, 2*time.Minute)
	t.Cleanup(cancelT)
	// An uncaught exception in the page's script fails the test.
	var mu sync.Mutex
	var thrown []string
	if err := chromedp.Listen(ctx, func(ev any) {
		if e, ok := ev.(*cdpruntime.EventExceptionThrown); ok && e.ExceptionDetails != nil {
			mu.Lock()
			d := e.ExceptionDetails
			msg := d.Text
			if d.Exception != nil && d.Exception.Description != "" {
				msg += " " + d.Exception.Description
			}
			thrown = append(thrown, fmt.Sprintf("%s (line %d)", msg, d.LineNumber+1))
			mu.Unlock()
		}
	}); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		if len(thrown) > 0 {
			t.Errorf("the page's script threw: %v", thrown)
		}
	})
	return ctx
}

// evalUntil evaluates expr in the page until it returns true or timeout
// passes.
func evalUntil(t *testing.T, ctx context.Context, what string, timeout time.Duration, expr string) {
	t.Helper()
	testkit.WaitFor(t, "the page to show "+what, timeout, func() bool {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
		if err != nil {
			t.Fatalf("%s: evaluate: %v", what, err)
		}
		return ok
	})
}

func screenshot(t *testing.T, ctx context.Context, name string) []byte {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, png, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", p, len(png))
	return png
}

// cell is one rect of a matrix SVG as the page drew it.
type cell struct {
	Owner  string `json:"owner"`
	Holder string `json:"holder"`
	Held   bool   `json:"held"`
}

// Acceptance 2 (issue 16): the status page, in a real headless browser,
// draws each live generation's owner x holder matrix as the node reports
// it, and shows a stopped node missing within a few seconds.
func TestStatusPageInBrowser(t *testing.T) {
	ctx := browser(t)
	ms := testCluster(t, 3)
	a, c := ms[0], ms[2]

	if err := chromedp.Do(ctx, chromedp.Navigate(a.srv.URL+"/")); err != nil {
		t.Fatalf("load the page: %v", err)
	}
	evalUntil(t, ctx, "a first answer", 10*time.Second, `(document.body.dataset.polls|0) > 0`)
	evalUntil(t, ctx, "this node unlocked", 5*time.Second, `document.getElementById("lock").textContent === "unlocked"`)

	// The matrix of every live generation, cell by cell.
	live := 0
	for _, g := range a.n.Generations() {
		if g.State != "open" && g.State != "committed" {
			// Retired and aborted generations are not drawn.
			evalUntil(t, ctx, fmt.Sprintf("no matrix for %s generation %d", g.State, g.Number), time.Second,
				fmt.Sprintf(`document.querySelector('svg.matrix[data-generation="%d"]') === null`, g.Number))
			continue
		}
		live++
		// The page may still show the previous answer; wait until it
		// draws this generation.
		sel := fmt.Sprintf(`svg.matrix[data-generation="%d"]`, g.Number)
		evalUntil(t, ctx, "the matrix of generation "+fmt.Sprint(g.Number), 5*time.Second,
			fmt.Sprintf(`document.querySelector('%s') !== null`, sel))
		cells, err := chromedp.Run(ctx, chromedp.Evaluate[[]cell](fmt.Sprintf(
			`Array.from(document.querySelectorAll('%s rect.cell')).map(r => ({owner: r.dataset.owner, holder: r.dataset.holder, held: r.classList.contains("held")}))`, sel)))
		if err != nil {
			t.Fatal(err)
		}
		n := len(g.Members)
		if len(cells) != n*n {
			t.Fatalf("generation %d: %d cells drawn, want %d", g.Number, len(cells), n*n)
		}
		want := map[[2]string]bool{}
		for i, owner := range g.Members {
			for j, holder := range g.Members {
				want[[2]string{owner, holder}] = g.Matrix[i][j]
			}
		}
		for _, cl := range cells {
			w, ok := want[[2]string{cl.Owner, cl.Holder}]
			if !ok {
				t.Fatalf("generation %d: a cell for owner %s holder %s, not members", g.Number, cl.Owner, cl.Holder)
			}
			if w != cl.Held {
				t.Fatalf("generation %d: owner %s holder %s drawn held=%v, ledger says %v", g.Number, cl.Owner, cl.Holder, cl.Held, w)
			}
			delete(want, [2]string{cl.Owner, cl.Holder})
		}
		if len(want) != 0 {
			t.Fatalf("generation %d: cells not drawn: %v", g.Number, want)
		}
		// The threshold line is drawn.
		evalUntil(t, ctx, "the threshold line", time.Second, fmt.Sprintf(`document.querySelector('%s line.threshold') !== null`, sel))
	}
	if live == 0 {
		t.Fatal("no live generation to draw")
	}
	rows := `document.querySelectorAll('#members tbody tr').length === 3`
	evalUntil(t, ctx, "three member rows", time.Second, rows)
	screenshot(t, ctx, "statuspage.png")

	// A node stops: the page shows it missing within a few seconds.
	cID := c.n.ID().String()
	c.stop()
	stopped := time.Now()
	evalUntil(t, ctx, "the stopped node missing", 5*time.Second, fmt.Sprintf(
		`(() => { const tr = document.querySelector('tr[data-peer="%s"]'); return tr !== null && tr.dataset.connection === "none" && tr.classList.contains("missing"); })()`, cID))
	t.Logf("the page showed the stopped node missing after %v", time.Since(stopped).Round(time.Millisecond))
	evalUntil(t, ctx, "the glance card naming it", 3*time.Second, fmt.Sprintf(
		`document.getElementById("members-sub").textContent.includes(%q)`, cID[len(cID)-6:]))
	png := screenshot(t, ctx, "statuspage-missing.png")
	if os.Getenv("UPDATE_SCREENSHOT") == "1" {
		if err := os.WriteFile("../docs/statuspage.png", png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Log("wrote docs/statuspage.png")
	}
}
