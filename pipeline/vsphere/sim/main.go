// vmpump's vCenter simulator: govmomi 0.24's vcsim plus what a backup tool needs and 0.24 lacks.
//
// For tests and the demo only. Build in GOPATH mode:
//
//	GO111MODULE=off GOPATH=<tmp>:/usr/share/gocode go build -o vcsim main.go
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
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"flag"
	"fmt"
	"io/ioutil"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/signal"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

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

// ---- HTTP dispatch ----

var (
	thisRe      = regexp.MustCompile(`<_this[^>]*>([^<]+)</_this>`)
	retvalRe    = regexp.MustCompile(`<returnval[^>]*>([^<]+)</returnval>`)
	sessionIDRe = regexp.MustCompile(`<sessionId[^>]*>([^<]+)</sessionId>`)
	quiesceRe   = regexp.MustCompile(`<quiesce[^>]*>true</quiesce>`)
	cookieRe    = regexp.MustCompile(`vmware_soap_session="?([^";]+)"?`)
)

func (h *harness) serve(inner http.Handler, w http.ResponseWriter, r *http.Request) {
	switch {
	case strings.HasPrefix(r.URL.Path, "/vmpump/"):
		h.control(w, r)
		return
	case strings.HasPrefix(r.URL.Path, "/folder"):
		if !h.validCookie(r) {
			http.Error(w, "session cookie required", http.StatusUnauthorized)
			return
		}
		inner.ServeHTTP(w, r)
		return
	case r.Method != http.MethodPost || !strings.HasPrefix(r.URL.Path, "/sdk"):
		inner.ServeHTTP(w, r)
		return
	}
	body, err := ioutil.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.Body = ioutil.NopCloser(bytes.NewReader(body))
	text := string(body)
	switch {
	case strings.Contains(text, "<QueryChangedDiskAreas"):
		h.queryChangedDiskAreas(w, body)
	case strings.Contains(text, "<QueryPerf>") || strings.Contains(text, "<QueryPerf "):
		h.queryPerf(w, body)
	case strings.Contains(text, "<CreateSnapshot_Task"):
		h.createSnapshot(inner, w, r, text)
	case strings.Contains(text, "<RemoveSnapshot_Task"):
		h.removeSnapshot(inner, w, r, text)
	case strings.Contains(text, "<Fetch"):
		h.fetch(inner, w, r)
	case strings.Contains(text, "<RetrievePropertiesEx"):
		h.retrievePaged(inner, w, r)
	case strings.Contains(text, "<ContinueRetrievePropertiesEx"):
		h.continueRetrieve(w, text)
	case strings.Contains(text, "<TerminateSession"):
		rec := httptest.NewRecorder()
		inner.ServeHTTP(rec, r)
		if rec.Code == http.StatusOK {
			h.mu.Lock()
			for _, m := range sessionIDRe.FindAllStringSubmatch(text, -1) {
				delete(h.sessions, m[1])
			}
			h.mu.Unlock()
		}
		copyResponse(w, rec)
	case strings.Contains(text, "<Login"), strings.Contains(text, "<Logout"):
		rec := httptest.NewRecorder()
		inner.ServeHTTP(rec, r)
		h.trackSession(rec, r, strings.Contains(text, "<Logout"))
		copyResponse(w, rec)
	default:
		inner.ServeHTTP(w, r)
	}
}

// fetch answers "no value" where vcsim 0.24 panics reading an unset property (vm.snapshot after
// the last snapshot is removed) and would drop the connection.
func (h *harness) fetch(inner http.Handler, w http.ResponseWriter, r *http.Request) {
	rec := httptest.NewRecorder()
	panicked := func() (p bool) {
		defer func() {
			if recover() != nil {
				p = true
			}
		}()
		inner.ServeHTTP(rec, r)
		return false
	}()
	if panicked {
		writeBody(w, http.StatusOK, `<FetchResponse xmlns="urn:vim25"></FetchResponse>`)
		return
	}
	copyResponse(w, rec)
}

func copyResponse(w http.ResponseWriter, rec *httptest.ResponseRecorder) {
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

func (h *harness) trackSession(rec *httptest.ResponseRecorder, r *http.Request, logout bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if logout {
		if m := cookieRe.FindStringSubmatch(r.Header.Get("Cookie")); m != nil {
			delete(h.sessions, m[1])
		}
		return
	}
	for _, c := range rec.Header()["Set-Cookie"] {
		if m := cookieRe.FindStringSubmatch(c); m != nil && rec.Code == http.StatusOK {
			h.sessions[m[1]] = true
		}
	}
}

func (h *harness) validCookie(r *http.Request) bool {
	m := cookieRe.FindStringSubmatch(r.Header.Get("Cookie"))
	if m == nil {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sessions[m[1]]
}

// ---- PropertyCollector paging ----

var (
	objectsRe = regexp.MustCompile(`(?s)<objects>.*?</objects>`)
	tokenRe   = regexp.MustCompile(`<token[^>]*>([^<]+)</token>`)
)

// retrievePaged splits vcsim's single answer into pages with a token, as vCenter does for large
// inventories, when the tests asked for it (control "retrieve-page").
func (h *harness) retrievePaged(inner http.Handler, w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	per := h.retrievePage
	h.mu.Unlock()
	rec := httptest.NewRecorder()
	inner.ServeHTTP(rec, r)
	objects := objectsRe.FindAllString(rec.Body.String(), -1)
	if per <= 0 || rec.Code != http.StatusOK || len(objects) <= per {
		copyResponse(w, rec)
		return
	}
	h.writePage(w, "RetrievePropertiesExResponse", objects)
}

func (h *harness) writePage(w http.ResponseWriter, element string, objects []string) {
	h.mu.Lock()
	per := h.retrievePage
	if per <= 0 {
		per = len(objects)
	}
	token := ""
	if len(objects) > per {
		h.pageSeq++
		token = "vmpump-page-" + strconv.Itoa(h.pageSeq)
		h.pages[token] = objects[per:]
		objects = objects[:per]
	}
	h.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, `<%s xmlns="urn:vim25"><returnval>`, element)
	if token != "" {
		fmt.Fprintf(&b, "<token>%s</token>", token)
	}
	b.WriteString(strings.Join(objects, ""))
	fmt.Fprintf(&b, `</returnval></%s>`, element)
	writeBody(w, http.StatusOK, b.String())
}

func (h *harness) continueRetrieve(w http.ResponseWriter, text string) {
	m := tokenRe.FindStringSubmatch(text)
	h.mu.Lock()
	var rest []string
	ok := false
	if m != nil {
		rest, ok = h.pages[m[1]]
		delete(h.pages, m[1])
	}
	h.mu.Unlock()
	if !ok {
		writeFault(w, "InvalidArgument", "unknown token", "token")
		return
	}
	h.writePage(w, "ContinueRetrievePropertiesExResponse", rest)
}

// ---- snapshots ----

func (h *harness) newChangeID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	parts := make([]string, len(b))
	for i := range b {
		parts[i] = hex.EncodeToString(b[i : i+1])
	}
	h.mu.Lock()
	h.snapCount++
	n := h.snapCount
	h.mu.Unlock()
	return strings.Join(parts[:8], " ") + "-" + strings.Join(parts[8:], " ") + "/" + strconv.Itoa(n)
}

// freshDevices replaces the VM's device slice and disk objects with copies, so that a snapshot that
// shares the old ones keeps them unchanged; with a changeId, it is set on every disk and logged.
func (h *harness) freshDevices(vm *simulator.VirtualMachine, changeID string) {
	old := vm.Config.Hardware.Device
	devices := make([]types.BaseVirtualDevice, len(old))
	copy(devices, old)
	for i, d := range devices {
		disk, ok := d.(*types.VirtualDisk)
		if !ok {
			continue
		}
		nd := *disk
		if b, ok := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo); ok {
			nb := *b
			if changeID != "" {
				nb.ChangeId = changeID
				appendLog(flatPath(nb.FileName), map[string]interface{}{"changeId": changeID})
			}
			nd.Backing = &nb
		}
		devices[i] = &nd
	}
	vm.Config.Hardware.Device = devices
}

func (h *harness) createSnapshot(inner http.Handler, w http.ResponseWriter, r *http.Request, text string) {
	m := thisRe.FindStringSubmatch(text)
	var vm *simulator.VirtualMachine
	if m != nil {
		vm, _ = simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachine", Value: m[1]}).(*simulator.VirtualMachine)
	}
	if vm != nil && quiesceRe.MatchString(text) {
		h.mu.Lock()
		fail := h.quiesceFail[vm.Name]
		h.mu.Unlock()
		if fail {
			// As on vCenter: the task is created, then ends in error.
			task := simulator.CreateTask(vm, "createSnapshot", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
				return nil, &types.ApplicationQuiesceFault{}
			})
			ref := task.Run()
			writeBody(w, http.StatusOK, `<CreateSnapshot_TaskResponse xmlns="urn:vim25"><returnval type="Task">`+
				ref.Value+`</returnval></CreateSnapshot_TaskResponse>`)
			return
		}
	}
	if vm != nil {
		simulator.Map.WithLock(vm, func() {
			id := ""
			if vm.Config.ChangeTrackingEnabled != nil && *vm.Config.ChangeTrackingEnabled {
				id = h.newChangeID()
			}
			h.freshDevices(vm, id)
		})
	}
	inner.ServeHTTP(w, r)
	if vm != nil {
		simulator.Map.WithLock(vm, func() { h.freshDevices(vm, "") })
	}
}

func (h *harness) removeSnapshot(inner http.Handler, w http.ResponseWriter, r *http.Request, text string) {
	var vmRef *types.ManagedObjectReference
	if m := thisRe.FindStringSubmatch(text); m != nil {
		if s, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: m[1]}).(*simulator.VirtualMachineSnapshot); ok {
			ref := s.Vm
			vmRef = &ref
		}
	}
	rec := httptest.NewRecorder()
	inner.ServeHTTP(rec, r)
	if vmRef != nil {
		if vm, ok := simulator.Map.Get(*vmRef).(*simulator.VirtualMachine); ok {
			// vcsim 0.24 leaves a non-nil empty snapshot info that panics in Fetch.
			simulator.Map.WithLock(vm, func() {
				if vm.Snapshot != nil && len(vm.Snapshot.RootSnapshotList) == 0 {
					vm.Snapshot = nil
				}
			})
			if m := retvalRe.FindStringSubmatch(rec.Body.String()); m != nil {
				if task, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "Task", Value: m[1]}).(*simulator.Task); ok {
					simulator.Map.WithLock(task, func() {
						ref := *vmRef
						task.Info.Entity = &ref
						task.Info.EntityName = vm.Name
					})
				}
			}
		}
	}
	copyResponse(w, rec)
}

// ---- CBT ----

type qcdaRequest struct {
	This        string `xml:"_this"`
	Snapshot    string `xml:"snapshot"`
	DeviceKey   int32  `xml:"deviceKey"`
	StartOffset int64  `xml:"startOffset"`
	ChangeID    string `xml:"changeId"`
}

type logEntry struct {
	Extents  [][2]int64 `json:"extents"`
	ChangeID string     `json:"changeId"`
	Reset    bool       `json:"reset"`
}

var logMu sync.Mutex

func appendLog(flat string, entry map[string]interface{}) {
	if flat == "" {
		return
	}
	logMu.Lock()
	defer logMu.Unlock()
	f, err := os.OpenFile(flat+".changes.jsonl", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return
	}
	defer f.Close()
	b, _ := json.Marshal(entry)
	_, _ = f.Write(append(b, '\n'))
}

func readLog(flat string) []logEntry {
	logMu.Lock()
	defer logMu.Unlock()
	f, err := os.Open(flat + ".changes.jsonl")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []logEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var e logEntry
		if json.Unmarshal(sc.Bytes(), &e) == nil {
			out = append(out, e)
		}
	}
	return out
}

// changedSince is the union of logged writes after marker `since` ("*": all) up to marker `until`.
func changedSince(entries []logEntry, since, until string) ([][2]int64, bool) {
	end := len(entries)
	for i, e := range entries {
		if until != "" && e.ChangeID == until {
			end = i
			break
		}
	}
	start := 0
	if since != "*" {
		start = -1
		for i := 0; i < end; i++ {
			if entries[i].Reset {
				start = -1
			} else if entries[i].ChangeID == since {
				start = i + 1
			}
		}
		if start < 0 {
			return nil, false
		}
	}
	var all [][2]int64
	for _, e := range entries[start:end] {
		all = append(all, e.Extents...)
	}
	return mergeExtents(all), true
}

func mergeExtents(in [][2]int64) [][2]int64 {
	sort.Slice(in, func(i, j int) bool { return in[i][0] < in[j][0] })
	var out [][2]int64
	for _, e := range in {
		if e[1] <= 0 {
			continue
		}
		if n := len(out); n > 0 && e[0] <= out[n-1][0]+out[n-1][1] {
			if end := e[0] + e[1]; end > out[n-1][0]+out[n-1][1] {
				out[n-1][1] = end - out[n-1][0]
			}
			continue
		}
		out = append(out, e)
	}
	return out
}

func (h *harness) queryChangedDiskAreas(w http.ResponseWriter, body []byte) {
	var req qcdaRequest
	if err := decodeMethod(body, "QueryChangedDiskAreas", &req); err != nil {
		writeFault(w, "InvalidRequest", err.Error(), "")
		return
	}
	snap, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachineSnapshot", Value: req.Snapshot}).(*simulator.VirtualMachineSnapshot)
	if !ok {
		writeFault(w, "ManagedObjectNotFound", "snapshot not found", "")
		return
	}
	var disk *types.VirtualDisk
	for _, d := range snap.Config.Hardware.Device {
		if vd, ok := d.(*types.VirtualDisk); ok && vd.Key == req.DeviceKey {
			disk = vd
		}
	}
	if disk == nil {
		writeFault(w, "InvalidArgument", "no disk with that device key", "deviceKey")
		return
	}
	backing, _ := disk.Backing.(*types.VirtualDiskFlatVer2BackingInfo)
	if backing == nil || backing.ChangeId == "" {
		writeFault(w, "FileFault", "change tracking is not enabled for this disk", "")
		return
	}
	capacity := disk.CapacityInBytes
	if req.StartOffset < 0 || req.StartOffset >= capacity {
		writeFault(w, "InvalidArgument", "startOffset beyond the disk", "startOffset")
		return
	}
	areas, known := changedSince(readLog(flatPath(backing.FileName)), req.ChangeID, backing.ChangeId)
	if !known {
		writeFault(w, "InvalidArgument", "A specified parameter was not correct: changeId", "changeId")
		return
	}
	start := req.StartOffset
	end := start + h.pageBytes
	if end > capacity {
		end = capacity
	}
	h.mu.Lock()
	lie := h.cbtLie
	h.mu.Unlock()
	var clipped [][2]int64
	for _, a := range areas {
		lo, hi := a[0], a[0]+a[1]
		if lie != "outside" {
			if lo < start {
				lo = start
			}
			if hi > end {
				hi = end
			}
		}
		if hi > lo && (lie == "outside" || (lo >= start && hi <= end)) {
			clipped = append(clipped, [2]int64{lo, hi - lo})
		}
	}
	spanStart, spanLen := start, end-start
	switch lie {
	case "gap":
		spanStart += 4096
		spanLen -= 4096
	case "overlap":
		if spanStart > 0 {
			spanStart -= 4096
			spanLen += 4096
		}
	case "stall":
		spanLen = 0
	case "omit":
		if len(clipped) > 0 {
			clipped = clipped[1:]
		}
	}
	var b strings.Builder
	b.WriteString(`<QueryChangedDiskAreasResponse xmlns="urn:vim25"><returnval>`)
	fmt.Fprintf(&b, "<startOffset>%d</startOffset><length>%d</length>", spanStart, spanLen)
	for _, a := range clipped {
		fmt.Fprintf(&b, "<changedArea><start>%d</start><length>%d</length></changedArea>", a[0], a[1])
	}
	b.WriteString(`</returnval></QueryChangedDiskAreasResponse>`)
	writeBody(w, http.StatusOK, b.String())
}

// ---- performance ----

type perfRequest struct {
	QuerySpec []struct {
		Entity   string `xml:"entity"`
		MetricID []struct {
			CounterID int32  `xml:"counterId"`
			Instance  string `xml:"instance"`
		} `xml:"metricId"`
		IntervalID int32 `xml:"intervalId"`
	} `xml:"querySpec"`
}

func (h *harness) queryPerf(w http.ResponseWriter, body []byte) {
	var req perfRequest
	if err := decodeMethod(body, "QueryPerf", &req); err != nil {
		writeFault(w, "InvalidRequest", err.Error(), "")
		return
	}
	var b strings.Builder
	b.WriteString(`<QueryPerfResponse xmlns="urn:vim25">`)
	now := time.Now().UTC().Format(time.RFC3339)
	for _, spec := range req.QuerySpec {
		host, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "HostSystem", Value: spec.Entity}).(*simulator.HostSystem)
		if !ok {
			continue
		}
		interval := spec.IntervalID
		if interval == 0 {
			interval = 20
		}
		fmt.Fprintf(&b, `<returnval xsi:type="PerfEntityMetric"><entity type="HostSystem">%s</entity>`, host.Self.Value)
		fmt.Fprintf(&b, `<sampleInfo><timestamp>%s</timestamp><interval>%d</interval></sampleInfo>`, now, interval)
		for _, metric := range spec.MetricID {
			switch h.counterIDs[metric.CounterID] {
			case "datastore.totalReadLatency.average", "datastore.maxTotalLatency.latest":
				for _, ref := range host.Datastore {
					ds, ok := simulator.Map.Get(ref).(*simulator.Datastore)
					if !ok {
						continue
					}
					h.mu.Lock()
					ms := h.latencyMs[ds.Name]
					h.mu.Unlock()
					writeSeries(&b, metric.CounterID, path.Base(ds.Info.GetDatastoreInfo().Url), ms)
				}
			case "cpu.usage.average":
				h.mu.Lock()
				cpu := h.hostCPU[host.Name]
				h.mu.Unlock()
				writeSeries(&b, metric.CounterID, "", cpu)
			}
		}
		b.WriteString(`</returnval>`)
	}
	b.WriteString(`</QueryPerfResponse>`)
	writeBody(w, http.StatusOK, b.String())
}

func writeSeries(b *strings.Builder, counter int32, instance string, value int64) {
	fmt.Fprintf(b, `<value xsi:type="PerfMetricIntSeries"><id><counterId>%d</counterId><instance>%s</instance></id><value>%d</value></value>`,
		counter, xmlEscape(instance), value)
}

// ---- SOAP plumbing ----

func decodeMethod(body []byte, method string, into interface{}) error {
	dec := xml.NewDecoder(bytes.NewReader(body))
	for {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == method {
			return dec.DecodeElement(into, &se)
		}
	}
}

func xmlEscape(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

func writeBody(w http.ResponseWriter, status int, inner string) {
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>`+
		`<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" `+
		`xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" `+
		`xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">`+
		`<soapenv:Body>%s</soapenv:Body></soapenv:Envelope>`, inner)
}

func writeFault(w http.ResponseWriter, kind, msg, property string) {
	detail := ""
	if property != "" {
		detail = "<invalidProperty>" + xmlEscape(property) + "</invalidProperty>"
	}
	if kind == "FileFault" {
		detail = "<file>disk</file>"
	}
	writeBody(w, http.StatusInternalServerError, fmt.Sprintf(
		`<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>%s</faultstring>`+
			`<detail><%sFault xmlns="urn:vim25" xsi:type="%s">%s</%sFault></detail></soapenv:Fault>`,
		xmlEscape(msg), kind, kind, detail, kind))
}

// ---- control API ----

type diskInfo struct {
	Key      int32  `json:"key"`
	FileName string `json:"file_name"`
	FlatPath string `json:"flat_path"`
	Capacity int64  `json:"capacity"`
}

func (h *harness) control(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	h.mu.Lock()
	defer h.mu.Unlock()
	switch strings.TrimPrefix(r.URL.Path, "/vmpump/") {
	case "info":
		h.mu.Unlock()
		info := h.info()
		h.mu.Lock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(info)
	case "tools":
		vm, ok := findByName("VirtualMachine", q.Get("vm")).(*simulator.VirtualMachine)
		if !ok {
			http.Error(w, "no such vm", http.StatusNotFound)
			return
		}
		running := q.Get("running") == "1"
		family := q.Get("family")
		simulator.Map.WithLock(vm, func() {
			status, tools := types.VirtualMachineToolsRunningStatusGuestToolsNotRunning, types.VirtualMachineToolsStatusToolsNotRunning
			if running {
				status, tools = types.VirtualMachineToolsRunningStatusGuestToolsRunning, types.VirtualMachineToolsStatusToolsOk
			}
			vm.Guest.ToolsRunningStatus = string(status)
			vm.Guest.ToolsStatus = tools
			vm.Guest.ToolsVersion = "12352"
			vm.Guest.ToolsVersionStatus2 = string(types.VirtualMachineToolsVersionStatusGuestToolsCurrent)
			if family != "" {
				vm.Guest.GuestFamily = family
			}
			if vm.Summary.Guest != nil {
				vm.Summary.Guest.ToolsRunningStatus = vm.Guest.ToolsRunningStatus
				vm.Summary.Guest.ToolsStatus = tools
				vm.Summary.Guest.ToolsVersionStatus2 = vm.Guest.ToolsVersionStatus2
			}
		})
	case "quiesce-fail":
		h.quiesceFail[q.Get("vm")] = q.Get("fail") == "1"
	case "retrieve-page":
		h.retrievePage, _ = strconv.Atoi(q.Get("objects"))
	case "cbt-lie":
		h.cbtLie = q.Get("mode")
	case "latency":
		ms, _ := strconv.ParseInt(q.Get("ms"), 10, 64)
		h.latencyMs[q.Get("datastore")] = ms
	case "host-cpu":
		v, _ := strconv.ParseInt(q.Get("hundredths"), 10, 64)
		h.hostCPU[q.Get("host")] = v
	default:
		http.Error(w, "unknown control", http.StatusNotFound)
		return
	}
}

func (h *harness) info() map[string]interface{} {
	datastores := map[string]string{}
	for _, e := range simulator.Map.All("Datastore") {
		ds := e.(*simulator.Datastore)
		datastores[ds.Name] = ds.Info.GetDatastoreInfo().Url
	}
	vms := map[string][]diskInfo{}
	for _, e := range simulator.Map.All("VirtualMachine") {
		vm := e.(*simulator.VirtualMachine)
		var disks []diskInfo
		simulator.Map.WithLock(vm, func() {
			for _, d := range vm.Config.Hardware.Device {
				if disk, ok := d.(*types.VirtualDisk); ok {
					name := diskFileName(disk)
					disks = append(disks, diskInfo{disk.Key, name, flatPath(name), disk.CapacityInBytes})
				}
			}
		})
		vms[vm.Name] = disks
	}
	return map[string]interface{}{"datastores": datastores, "vms": vms}
}
