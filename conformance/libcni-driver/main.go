// Command libcni-driver runs a CNI network list the way containerd and
// CRI-O do, through libcni: VERSION (ValidateNetworkList), ADD, CHECK,
// DEL and a repeated DEL, against one network namespace.
//
//	libcni-driver -plugin-dir DIR -cache-dir DIR [-ops add,check,del,del] CONFLIST NETNS CONTAINERID IFNAME
//
// It prints one line per step and exits non-zero on the first failure.
// Built offline against Debian's libcni:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o libcni-driver .
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/version"
)

type driver struct {
	cni  *libcni.CNIConfig
	list *libcni.NetworkConfigList
	rt   *libcni.RuntimeConf
}

func main() {
	pluginDir := flag.String("plugin-dir", "/opt/cni/bin", "plugin search path (CNI_PATH, ':'-separated)")
	cacheDir := flag.String("cache-dir", "", "libcni result cache dir (required: keeps /var/lib/cni untouched)")
	ops := flag.String("ops", "add,check,del,del", "steps to run, in order: version, add, check, del")
	timeout := flag.Duration("timeout", 60*time.Second, "limit for all steps together")
	flag.Parse()
	if flag.NArg() != 4 || *cacheDir == "" {
		fmt.Fprintln(os.Stderr, "usage: libcni-driver -plugin-dir DIR -cache-dir DIR [-ops add,check,del,del] CONFLIST NETNS CONTAINERID IFNAME")
		os.Exit(2)
	}
	list, err := libcni.ConfListFromFile(flag.Arg(0))
	if err != nil {
		fail("load", err)
	}
	d := driver{
		cni:  libcni.NewCNIConfigWithCacheDir(strings.Split(*pluginDir, ":"), *cacheDir, nil),
		list: list,
		rt: &libcni.RuntimeConf{
			NetNS:       flag.Arg(1),
			ContainerID: flag.Arg(2),
			IfName:      flag.Arg(3),
			// What the kubelet passes through CRI runtimes.
			Args: [][2]string{
				{"IgnoreUnknown", "1"},
				{"K8S_POD_NAMESPACE", "default"},
				{"K8S_POD_NAME", "conformance"},
				{"K8S_POD_INFRA_CONTAINER_ID", flag.Arg(2)},
			},
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	fmt.Printf("network %q cniVersion %s, %d plugin(s)\n", list.Name, list.CNIVersion, len(list.Plugins))
	for _, op := range strings.Split(*ops, ",") {
		if err := d.run(ctx, op); err != nil {
			fail(op, err)
		}
	}
	fmt.Println("ok")
}

func (d *driver) run(ctx context.Context, op string) error {
	switch op {
	case "version":
		_, err := d.cni.ValidateNetworkList(ctx, d.list)
		if err == nil {
			fmt.Println("VERSION: every plugin supports", d.list.CNIVersion)
		}
		return err
	case "add":
		res, err := d.cni.AddNetworkList(ctx, d.list, d.rt)
		if err != nil {
			return err
		}
		out, err := json.Marshal(res)
		if err != nil {
			return err
		}
		fmt.Printf("ADD: %s\n", out)
		return nil
	case "check":
		// CHECK exists from 0.4.0 on; runtimes skip it for older lists.
		newer, err := version.GreaterThanOrEqualTo(d.list.CNIVersion, "0.4.0")
		if err != nil {
			return err
		}
		if !newer {
			fmt.Printf("CHECK: skipped, not in cniVersion %s\n", d.list.CNIVersion)
			return nil
		}
		if err := d.cni.CheckNetworkList(ctx, d.list, d.rt); err != nil {
			return err
		}
		fmt.Println("CHECK: ok")
		return nil
	case "del":
		if err := d.cni.DelNetworkList(ctx, d.list, d.rt); err != nil {
			return err
		}
		fmt.Println("DEL: ok")
		return nil
	}
	return fmt.Errorf("unknown step %q (want version, add, check or del)", op)
}

func fail(step string, err error) {
	fmt.Printf("FAIL %s: %v\n", strings.ToUpper(step), err)
	os.Exit(1)
}
