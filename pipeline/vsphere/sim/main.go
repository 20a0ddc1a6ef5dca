// vmpump's vCenter simulator: govmomi 0.24's vcsim plus what a backup tool needs and 0.24 lacks.
//
// For tests and the demo only. Build in GOPATH mode:
//
//	GO111MODULE=off GOPATH=<tmp>:/usr/share/gocode go build -o vcsim *.go
//
// It prints its SDK URL (one line) on stdout, then serves until killed. On top of vcsim it:
//   - answers QueryChangedDiskAreas from a per-disk change log (<flat file>.changes.jsonl, JSON lines:
//     {"extents": [[offset, length], ...]} written by tests, {"changeId": "..."} written here at each
//     snapshot, {"reset": true} to invalidate older changeIds), paged by -cbt-page-bytes;
//   - gives snapshot disks a fresh opaque changeId when CBT is on, with fresh device objects so an
//     older snapshot's changeId never moves (0.24 copies the config shallowly);
//   - fixes RemoveSnapshot_Task's TaskInfo.entity (0.24 puts the snapshot there) and clears
//     vm.snapshot after the last removal (0.24 panics reading it);
//   - answers QueryPerf for datastore latency and host CPU from scripted values;
//   - requires the session cookie on /folder, as vCenter does;
//   - a control API under /vmpump/ (no auth: loopback test harness only).
package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

const firstDiskKey = 2000

type harness struct {
	pageBytes int64

	mu          sync.Mutex
	cbtLie      string           // "", "gap", "overlap", "stall", "omit", "outside"
	latencyMs   map[string]int64 // datastore name -> read latency
	hostCPU     map[string]int64 // host name -> cpu usage in 1/100 %
	quiesceFail map[string]bool  // VM name -> quiesced snapshots fail
	sessions    map[string]bool  // session cookies seen in Login responses
	counterIDs  map[int32]string // perf counter id -> "group.name.rollup"
	snapCount   int
	// PropertyCollector paging (vcsim 0.24 never pages): objects per page and pending pages.
	retrievePage int
	pages        map[string][]string
	pageSeq      int
}

func main() {
	hosts := flag.Int("hosts", 3, "ESXi hosts in the cluster")
	datastores := flag.Int("datastores", 2, "datastores, mounted on every host")
	vms := flag.Int("vms", 4, "virtual machines")
	diskMB := flag.Int64("disk-mb", 64, "capacity of every VM disk in MiB")
	disks := flag.Int("disks", 1, "disks per VM, spread over the datastores")
	pageBytes := flag.Int64("cbt-page-bytes", 64<<20, "most bytes of disk one QueryChangedDiskAreas answer spans")
	user := flag.String("user", "vmpump", "login user")
	pass := flag.String("password", "vmpump-pass", "login password")
	useTLS := flag.Bool("tls", false, "serve https with a self-signed certificate")
	flag.Parse()

	model := simulator.VPX()
	model.Host = 0
	model.ClusterHost = *hosts
	model.Datastore = *datastores
	model.Machine = *vms
	if err := model.Create(); err != nil {
		log.Fatal(err)
	}
	defer model.Remove()
	model.Service.Listen = &url.URL{Host: "127.0.0.1:0", User: url.UserPassword(*user, *pass)}
	if *useTLS {
		model.Service.TLS = new(tls.Config)
	}

	h := &harness{
		pageBytes:   *pageBytes,
		latencyMs:   map[string]int64{},
		hostCPU:     map[string]int64{},
		quiesceFail: map[string]bool{},
		sessions:    map[string]bool{},
		counterIDs:  map[int32]string{},
		pages:       map[string][]string{},
	}
	h.prepareDisks(*diskMB<<20, *disks)
	h.loadCounters()

	server := model.Service.NewServer()
	defer server.Close()
	inner := server.Config.Handler
	server.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.serve(inner, w, r)
	})

	u := *server.URL
	u.User = nil
	fmt.Println(u.String())
	_ = os.Stdout.Sync()

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
}

// prepareDisks gives every VM `perVM` disks of the given capacity, with vCenter-like device keys
// (2000, 2001, ...), spread over the datastores round-robin (VM i's disk d on datastore i+d), each
// with a sparse flat file; and sets changeTrackingEnabled to an explicit false.
func (h *harness) prepareDisks(capacity int64, perVM int) {
	var datastores []*simulator.Datastore
	for _, e := range simulator.Map.All("Datastore") {
		datastores = append(datastores, e.(*simulator.Datastore))
	}
	sort.Slice(datastores, func(i, j int) bool { return datastores[i].Name < datastores[j].Name })
	var vms []*simulator.VirtualMachine
	for _, e := range simulator.Map.All("VirtualMachine") {
		vms = append(vms, e.(*simulator.VirtualMachine))
	}
	sort.Slice(vms, func(i, j int) bool { return vms[i].Name < vms[j].Name })
	for i, vm := range vms {
		simulator.Map.WithLock(vm, func() {
			vm.Config.ChangeTrackingEnabled = types.NewBool(false)
			var model *types.VirtualDisk
			var kept []types.BaseVirtualDevice
			for _, d := range vm.Config.Hardware.Device {
				if disk, ok := d.(*types.VirtualDisk); ok {
					if model == nil {
						model = disk
					}
					continue
				}
				kept = append(kept, d)
			}
			if model == nil {
				return
			}
			var controller *types.VirtualController
			for _, d := range kept {
				if c, ok := d.(types.BaseVirtualController); ok && c.GetVirtualController().Key == model.ControllerKey {
					controller = c.GetVirtualController()
				}
			}
			if controller != nil {
				controller.Device = nil
			}
			vm.LayoutEx.Disk = nil
			vm.Datastore = nil
			for d := 0; d < perVM; d++ {
				ds := datastores[(i+d)%len(datastores)]
				disk := *model
				backing := *model.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
				backing.FileName = fmt.Sprintf("[%s] %s/disk%d.vmdk", ds.Name, vm.Name, d+1)
				ref := ds.Self
				backing.Datastore = &ref
				disk.Backing = &backing
				disk.Key = int32(firstDiskKey + d)
				unit := int32(d)
				if unit >= 7 {
					unit++ // unit 7 is the SCSI controller itself
				}
				disk.UnitNumber = &unit
				disk.CapacityInKB = capacity / 1024
				disk.CapacityInBytes = capacity
				disk.DeviceInfo = &types.Description{Label: fmt.Sprintf("Hard disk %d", d+1), Summary: fmt.Sprintf("%d KB", capacity/1024)}
				kept = append(kept, &disk)
				if controller != nil {
					controller.Device = append(controller.Device, disk.Key)
				}
				if !containsRef(vm.Datastore, ref) {
					vm.Datastore = append(vm.Datastore, ref)
				}
				simulator.Map.WithLock(ds, func() {
					if !containsRef(ds.Vm, vm.Self) {
						ds.Vm = append(ds.Vm, vm.Self)
					}
				})
				flat := flatPath(backing.FileName)
				_ = os.MkdirAll(filepath.Dir(flat), 0o755)
				if f, err := os.OpenFile(flat, os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
					_ = f.Truncate(capacity)
					_ = f.Close()
				}
			}
			vm.Config.Hardware.Device = kept
		})
	}
}

func containsRef(refs []types.ManagedObjectReference, ref types.ManagedObjectReference) bool {
	for _, r := range refs {
		if r == ref {
			return true
		}
	}
	return false
}

func (h *harness) loadCounters() {
	si := simulator.Map.Get(types.ManagedObjectReference{Type: "ServiceInstance", Value: "ServiceInstance"})
	pm := simulator.Map.Get(*si.(*simulator.ServiceInstance).Content.PerfManager)
	for _, c := range pm.(*simulator.PerformanceManager).PerfCounter {
		name := c.GroupInfo.GetElementDescription().Key + "." + c.NameInfo.GetElementDescription().Key + "." + string(c.RollupType)
		h.counterIDs[c.Key] = name
	}
}

func diskFileName(disk *types.VirtualDisk) string {
	if b, ok := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo); ok {
		return b.GetVirtualDeviceFileBackingInfo().FileName
	}
	return ""
}

var dsPathRe = regexp.MustCompile(`^\[([^\]]+)\]\s*(.*)$`)

// flatPath maps "[ds] dir/disk1.vmdk" to the local path of dir/disk1-flat.vmdk.
func flatPath(fileName string) string {
	m := dsPathRe.FindStringSubmatch(fileName)
	if m == nil {
		return ""
	}
	dir := datastoreDir(m[1])
	if dir == "" {
		return ""
	}
	rel := strings.TrimSuffix(m[2], ".vmdk") + "-flat.vmdk"
	return filepath.Join(dir, rel)
}

func datastoreDir(name string) string {
	for _, e := range simulator.Map.All("Datastore") {
		ds := e.(*simulator.Datastore)
		if ds.Name == name {
			return ds.Info.GetDatastoreInfo().Url
		}
	}
	return ""
}

func findByName(kind, name string) mo.Entity {
	for _, e := range simulator.Map.All(kind) {
		if e.Entity().Name == name {
			return e
		}
	}
	return nil
}
