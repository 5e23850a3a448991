// Command cni-bench times CNI plugin calls: the wall time of one plugin
// process, from exec to exit, with the same harness for every plugin.
//
//	cni-bench run -plugin P -conf FILE -cni-path DIR -parallel N -out FILE POD_NETNS_PATH...
//	    (run it inside the node's network namespace: ip netns exec NODE cni-bench run ...)
//	    ADD every pod (N calls in flight), then DEL every pod with its ADD
//	    result as prevResult, as runtimes do. Writes the durations as JSON.
//	cni-bench report NAME=FILE...
//	    Prints median and p99 per op; the ratio column compares every
//	    file with the last one (the reference).
//
// Standard library only, so it builds offline: go build -o cni-bench .
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"time"
)

// timings is what one run writes: milliseconds per call.
type timings struct {
	Parallel int       `json:"parallel"`
	Add      []float64 `json:"add"`
	Del      []float64 `json:"del"`
	// Wall time of all ADDs / all DELs together, in seconds.
	AddWall float64 `json:"add_wall_s"`
	DelWall float64 `json:"del_wall_s"`
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = runCmd(os.Args[2:])
	case "report":
		err = report(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cni-bench:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: cni-bench run -plugin P -conf FILE -cni-path DIR -parallel N -out FILE NETNS...\n       cni-bench report NAME=FILE...")
	os.Exit(2)
}

type runner struct {
	plugin, cniPath string
	conf            map[string]interface{}
}

func runCmd(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	plugin := fs.String("plugin", "", "plugin binary")
	confPath := fs.String("conf", "", "plugin config (JSON)")
	cniPath := fs.String("cni-path", "/usr/lib/cni", "CNI_PATH for the plugin (delegated IPAM)")
	parallel := fs.Int("parallel", 1, "calls in flight")
	out := fs.String("out", "", "where to write the timings")
	_ = fs.Parse(args)
	if *plugin == "" || *confPath == "" || *out == "" || fs.NArg() == 0 || *parallel < 1 {
		usage()
	}
	raw, err := os.ReadFile(*confPath)
	if err != nil {
		return err
	}
	r := runner{plugin: *plugin, cniPath: *cniPath}
	if err := json.Unmarshal(raw, &r.conf); err != nil {
		return fmt.Errorf("%s: %w", *confPath, err)
	}
	pods := fs.Args()
	results := make([][]byte, len(pods))
	t := timings{Parallel: *parallel}
	start := time.Now()
	t.Add, err = r.each(pods, *parallel, func(i int) (time.Duration, error) {
		d, res, err := r.call("ADD", pods[i], nil)
		results[i] = res
		return d, err
	})
	if err != nil {
		return err
	}
	t.AddWall = time.Since(start).Seconds()
	start = time.Now()
	t.Del, err = r.each(pods, *parallel, func(i int) (time.Duration, error) {
		d, _, err := r.call("DEL", pods[i], results[i])
		return d, err
	})
	if err != nil {
		return err
	}
	t.DelWall = time.Since(start).Seconds()
	data, err := json.Marshal(t)
	if err != nil {
		return err
	}
	return os.WriteFile(*out, data, 0o644)
}

// each runs f for every pod index with at most `parallel` in flight and
// returns the durations in milliseconds; it stops at the first error.
func (r *runner) each(pods []string, parallel int, f func(int) (time.Duration, error)) ([]float64, error) {
	ms := make([]float64, len(pods))
	next := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for w := 0; w < parallel; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				d, err := f(i)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				mu.Unlock()
				ms[i] = float64(d.Microseconds()) / 1000
			}
		}()
	}
	for i := range pods {
		next <- i
	}
	close(next)
	wg.Wait()
	return ms, firstErr
}

// call runs the plugin once; the timed section is exec to exit.
func (r *runner) call(op, netns string, prev []byte) (time.Duration, []byte, error) {
	conf := map[string]interface{}{}
	for k, v := range r.conf {
		conf[k] = v
	}
	if prev != nil {
		conf["prevResult"] = json.RawMessage(prev)
	}
	stdin, err := json.Marshal(conf)
	if err != nil {
		return 0, nil, err
	}
	parts := strings.Split(netns, "/")
	id := "bench-" + parts[len(parts)-1]
	cmd := exec.Command(r.plugin)
	cmd.Env = []string{
		"PATH=/usr/sbin:/usr/bin:/sbin:/bin",
		"CNI_COMMAND=" + op, "CNI_CONTAINERID=" + id, "CNI_NETNS=" + netns,
		"CNI_IFNAME=eth0", "CNI_PATH=" + r.cniPath, "CNI_ARGS=IgnoreUnknown=1",
	}
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err = cmd.Run()
	d := time.Since(start)
	if err != nil {
		return d, nil, fmt.Errorf("%s %s %s: %v: %s %s", r.plugin, op, netns, err, stdout.String(), stderr.String())
	}
	return d, stdout.Bytes(), nil
}

func percentile(v []float64, p float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	// Nearest rank.
	idx := int(p*float64(len(s))+0.999999) - 1
	if idx < 0 {
		idx = 0
	}
	return s[idx]
}

func report(args []string) error {
	if len(args) < 2 {
		usage()
	}
	type named struct {
		name string
		t    timings
	}
	var all []named
	for _, a := range args {
		kv := strings.SplitN(a, "=", 2)
		if len(kv) != 2 {
			usage()
		}
		raw, err := os.ReadFile(kv[1])
		if err != nil {
			return err
		}
		var t timings
		if err := json.Unmarshal(raw, &t); err != nil {
			return fmt.Errorf("%s: %w", kv[1], err)
		}
		all = append(all, named{kv[0], t})
	}
	ref := all[len(all)-1]
	fmt.Printf("| %-20s | %-3s | %5s | %11s | %11s | %12s | %9s | %12s |\n", "plugin", "op", "pods", "median (ms)", "p99 (ms)", "median ratio", "p99 ratio", "all pods (s)")
	fmt.Printf("|%s|%s|%s|%s|%s|%s|%s|%s|\n", strings.Repeat("-", 22), "-----", "-------", strings.Repeat("-", 13), strings.Repeat("-", 13), strings.Repeat("-", 14), strings.Repeat("-", 11), strings.Repeat("-", 14))
	for _, op := range []string{"ADD", "DEL"} {
		for _, n := range all {
			v, rv, wall := n.t.Add, ref.t.Add, n.t.AddWall
			if op == "DEL" {
				v, rv, wall = n.t.Del, ref.t.Del, n.t.DelWall
			}
			m, p := percentile(v, 0.5), percentile(v, 0.99)
			fmt.Printf("| %-20s | %-3s | %5d | %11.2f | %11.2f | %12.2f | %9.2f | %12.2f |\n",
				n.name, op, len(v), m, p, m/percentile(rv, 0.5), p/percentile(rv, 0.99), wall)
		}
	}
	return nil
}
