package integration

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestDemo runs "pgveil demo", queries the sample data through its proxy,
// and checks that Ctrl-C removes everything.
func TestDemo(t *testing.T) {
	bin, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "demo", "--listen", "127.0.0.1:0")
	cmd.Env = cleanEnv()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	connRe := regexp.MustCompile(`psql "(host=127\.0\.0\.1 port=\d+ user=analyst dbname=demo)"`)
	dataRe := regexp.MustCompile(`data in (\S+)/data\)`)
	var dsn, dataDir string
	timeout := time.After(2 * time.Minute)
	for dsn == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("demo exited before printing how to connect")
			}
			if m := dataRe.FindStringSubmatch(l); m != nil {
				dataDir = m[1]
			}
			if m := connRe.FindStringSubmatch(l); m != nil {
				dsn = m[1] + " sslmode=disable"
			}
		case <-timeout:
			t.Fatal("demo did not start")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	var customers, orders int
	if err := conn.QueryRow(ctx, "select (select count(*) from customers), (select count(*) from orders)").Scan(&customers, &orders); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	if customers != 1000 || orders != 5000 {
		t.Fatalf("demo data: %d customers, %d orders", customers, orders)
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	for range lines {
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("demo exit: %v", err)
	}
	if dataDir == "" {
		t.Fatal("demo did not say where its data is")
	}
	if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
		t.Fatalf("demo left %s behind (%v)", dataDir, err)
	}
}
