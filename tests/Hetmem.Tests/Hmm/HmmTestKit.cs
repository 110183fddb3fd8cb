using System.Runtime.InteropServices;
using Hetmem.Hmm;
using Hetmem.Mm;
using Hetmem.Physical;
using Hetmem.Storage;

namespace Hetmem.Tests.Hmm;

/// <summary>
/// Physical memory, address spaces and CPUs for one HMM test, with a leak check: every frame used during the test
/// must be free again after the spaces exited.
/// </summary>
internal sealed class HmmTestBed : IDisposable
{
    private readonly List<AddressSpace> _spaces = [];
    private readonly List<IDisposable> _disposables = [];
    private readonly long _usedAtStart;

    public HmmTestBed(ulong ramBytes = 64UL << 20, uint swapSlots = 0)
    {
        Memory = new PhysicalMemory(ramBytes);
        Swap = swapSlots == 0 ? null : new SwapStore(swapSlots);
        _usedAtStart = Memory.UsedFrames;
    }

    public PhysicalMemory Memory { get; }
    public SwapStore? Swap { get; }
    public bool CheckLeaks { get; set; } = true;

    public AddressSpace NewSpace()
    {
        var mm = new AddressSpace(Memory, Swap);
        _spaces.Add(mm);
        return mm;
    }

    public Cpu NewCpu(AddressSpace mm) => Own(new Cpu(mm));

    /// <summary>A shared-memory object released after the address spaces exited.</summary>
    public ShmemFile Shmem(ulong size)
    {
        var f = new ShmemFile(Memory, size, Swap);
        Own(new InodeRef(f));
        return f;
    }

    private sealed class InodeRef(Inode inode) : IDisposable
    {
        public void Dispose() => inode.Release();
    }

    public T Own<T>(T d) where T : IDisposable
    {
        _disposables.Add(d);
        return d;
    }

    public void Dispose()
    {
        for (int i = _disposables.Count - 1; i >= 0; i--)
        {
            if (_disposables[i] is Cpu)
            {
                _disposables[i].Dispose();
            }
        }
        foreach (AddressSpace mm in _spaces)
        {
            mm.Exit();
        }
        for (int i = _disposables.Count - 1; i >= 0; i--)
        {
            if (_disposables[i] is not Cpu)
            {
                _disposables[i].Dispose();
            }
        }
        long used = Memory.UsedFrames;
        Swap?.Dispose();
        Memory.Dispose();
        if (CheckLeaks)
        {
            Assert.True(used == _usedAtStart, $"frame leak: {used - _usedAtStart} frames still used after every address space exited");
        }
    }
}

/// <summary>
/// A tiny device that mirrors one window of an address space the way every Hetmem device must: an interval notifier,
/// a device page table (one entry per 4 KiB page), the canonical <see cref="HmmMirrorHelper.FaultAndProgram"/> loop,
/// and an invalidate callback that zaps under the update lock. It also checks, while programming, that every entry it
/// installs matches the CPU page table at that instant (invariant 8 and the "same page or one side empty" rule).
/// </summary>
internal sealed unsafe class TestMirrorDevice : IDeviceMirror, IMmuIntervalNotifierOps, IDisposable
{
    public const ulong DevValid = 1;
    public const ulong DevWrite = 2;

    private readonly PhysicalMemory _mem;
    private long _violations;
    private string? _firstViolation;

    public TestMirrorDevice(AddressSpace mm, ulong start, ulong end, object? owner = null)
    {
        Space = mm;
        _mem = mm.Memory;
        Start = start;
        End = end;
        Owner = owner;
        Ptes = new ulong[(end - start) >> Page.Shift];
        Generations = new uint[Ptes.Length];
        Notifier = MmuIntervalNotifier.Insert(mm, start, end - start, this);
    }

    public AddressSpace Space { get; }
    public ulong Start { get; }
    public ulong End { get; }
    public object? Owner { get; }
    public MmuIntervalNotifier Notifier { get; }
    public Lock UpdateLock { get; } = new();
    /// <summary>Device PTEs: (pfn &lt;&lt; 2) | DevWrite | DevValid, 0 when empty. Guarded by <see cref="UpdateLock"/>.</summary>
    public ulong[] Ptes { get; }
    public uint[] Generations { get; }
    public List<MmuNotifierRange> Events { get; } = [];
    public bool CheckAgainstCpu { get; set; } = true;
    public long Programs;
    public long Violations => Interlocked.Read(ref _violations);
    public string? FirstViolation => _firstViolation;

    public HmmRange NewRange(ulong start, ulong end, HmmPfnFlags defaults = HmmPfnFlags.ReqFault)
        => new(Notifier, start, end) { DefaultFlags = defaults, DevPrivateOwner = Owner };

    /// <summary>Faults [start, end) and programs the device through the canonical loop.</summary>
    public Errno Fault(ulong start, ulong end, bool write = false)
        => HmmMirrorHelper.FaultAndProgram(this, NewRange(start, end, HmmPfnFlags.ReqFault | (write ? HmmPfnFlags.ReqWrite : 0)));

    public Errno ProgramDevice(HmmRange range)
    {
        for (int i = 0; i < range.HmmPfns.Length; i++)
        {
            ulong va = range.Start + ((ulong)i << Page.Shift);
            int d = (int)((va - Start) >> Page.Shift);
            ulong e = range.HmmPfns[i];
            if (!HmmPfn.Has(e, HmmPfnFlags.Valid))
            {
                Ptes[d] = 0;
                continue;
            }
            ulong pfn = HmmPfn.ToPfn(e);
            bool write = HmmPfn.Has(e, HmmPfnFlags.Write);
            if (CheckAgainstCpu)
            {
                Pte cpu = Space.QueryPte(va, out int order);
                ulong cpuPfn = order == 0 ? cpu.Pfn : cpu.Pfn + ((va - Page.AlignDown(va, Page.Bytes(order))) >> Page.Shift);
                bool devicePrivate = !cpu.IsPresent && cpu.SwapType == SwapEntryType.DevicePrivate;
                bool same = (cpu.IsPresent || devicePrivate) && cpuPfn == pfn;
                bool writeOk = !write || cpu.IsWritable || devicePrivate && cpu.SwapWritable;
                if (!same || !writeOk)
                {
                    Violation($"programming 0x{va:x} → pfn 0x{pfn:x}{(write ? " W" : "")} while the CPU has {cpu} (order {order})");
                }
            }
            Ptes[d] = (pfn << 2) | DevValid | (write ? DevWrite : 0);
            Generations[d] = _mem.IsRam(pfn) ? _mem.Frame(pfn).Generation : 0;
        }
        Programs++;
        return Errno.Ok;
    }

    public bool Invalidate(MmuIntervalNotifier subscription, in MmuNotifierRange range, long curSeq)
    {
        lock (UpdateLock)
        {
            subscription.SetSeq(curSeq);
            Events.Add(range);
            ulong s = Math.Max(range.Start, Start);
            ulong e = Math.Min(range.End, End);
            for (ulong a = s; a < e; a += Page.Size)
            {
                Ptes[(a - Start) >> Page.Shift] = 0;
            }
        }
        return true;
    }

    public void Violation(string what)
    {
        if (Interlocked.Increment(ref _violations) == 1)
        {
            _firstViolation = what;
        }
    }

    /// <summary>The device entry for <paramref name="va"/>, read under the update lock.</summary>
    public ulong Pte(ulong va)
    {
        lock (UpdateLock)
        {
            return Ptes[(va - Start) >> Page.Shift];
        }
    }

    public static ulong PfnOf(ulong devicePte) => devicePte >> 2;

    /// <summary>Device access through its own page table: reads a byte, or null when the device has no mapping (it would fault).</summary>
    public byte? DeviceRead(ulong va)
    {
        lock (UpdateLock)
        {
            ulong p = Ptes[(va - Start) >> Page.Shift];
            if (p == 0)
            {
                return null;
            }
            CheckLive(va, p);
            return _mem.Address(PfnOf(p))[va & Page.OffsetMask];
        }
    }

    /// <summary>Device write through its own page table: false when it has no writable mapping.</summary>
    public bool DeviceWrite(ulong va, byte value)
    {
        lock (UpdateLock)
        {
            ulong p = Ptes[(va - Start) >> Page.Shift];
            if ((p & DevWrite) == 0)
            {
                return false;
            }
            CheckLive(va, p);
            _mem.Address(PfnOf(p))[va & Page.OffsetMask] = value;
            return true;
        }
    }

    /// <summary>A device access must never reach a freed or reused frame (use after invalidation).</summary>
    private void CheckLive(ulong va, ulong p)
    {
        ulong pfn = PfnOf(p);
        if (!_mem.IsRam(pfn))
        {
            return;
        }
        // Every frame of a page gets a new generation when the page is freed (compound tails keep no count of their own).
        uint generation = Volatile.Read(ref _mem.Frame(pfn).Generation);
        if (generation != Generations[(va - Start) >> Page.Shift])
        {
            Violation($"device access at 0x{va:x} reached frame 0x{pfn:x} after it was freed (generation {generation}, mapped at {Generations[(va - Start) >> Page.Shift]})");
        }
    }

    /// <summary>Number of device entries currently mapped in [start, end), optionally only writable ones.</summary>
    public int Mapped(ulong start, ulong end, bool writableOnly = false)
    {
        lock (UpdateLock)
        {
            int n = 0;
            for (ulong a = Math.Max(start, Start); a < Math.Min(end, End); a += Page.Size)
            {
                ulong p = Ptes[(a - Start) >> Page.Shift];
                if (p != 0 && (!writableOnly || (p & DevWrite) != 0))
                {
                    n++;
                }
            }
            return n;
        }
    }

    public void Dispose() => Notifier.Remove();
}

/// <summary>
/// A small device-private memory for tests (kernel: a driver's MEMORY_DEVICE_PRIVATE dev_pagemap): a native arena,
/// a free list, a hand-rolled one-page move of an anonymous page into it, and a <c>MigrateToRam</c> that copies the
/// page back into a fresh anonymous RAM page. It does not depend on MigrateVma.
/// </summary>
internal sealed unsafe class TestDevicePrivateMemory : IDevicePageMapOps, IDisposable
{
    private readonly PhysicalMemory _mem;
    private readonly byte* _arena;
    private readonly Stack<ulong> _free = new();
    private int _migratedBack;

    public TestDevicePrivateMemory(PhysicalMemory mem, int pages, object owner)
    {
        _mem = mem;
        Owner = owner;
        _arena = (byte*)NativeMemory.AlignedAlloc((nuint)pages * Page.Size, Page.Size);
        Map = mem.RegisterDevicePageMap(MemoryType.DevicePrivate, (ulong)pages, _arena, owner, this);
        for (int i = pages - 1; i >= 0; i--)
        {
            _free.Push(Map.FirstPfn + (ulong)i);
        }
        Capacity = pages;
    }

    public DevicePageMap Map { get; }
    public object Owner { get; }
    public int Capacity { get; }
    public int FreePages
    {
        get
        {
            lock (_free)
            {
                return _free.Count;
            }
        }
    }
    public int MigratedBack => Volatile.Read(ref _migratedBack);

    public void PageFree(ulong pfn)
    {
        lock (_free)
        {
            _free.Push(pfn);
        }
    }

    /// <summary>Moves the present anonymous page at <paramref name="va"/> into device memory (one-page migrate_vma, MIGRATE event with our owner).</summary>
    public ulong MoveToDevice(AddressSpace mm, ulong va, bool writable = true)
    {
        using (mm.MmapLock.Read())
        {
            Pte e = mm.Lookup(va, out int order, out ulong* slot);
            Assert.True(order == 0 && e.IsPresent && _mem.IsRam(e.Pfn) && e.Pfn != _mem.ZeroPfn, $"0x{va:x} is not a present anonymous 4 KiB page: {e}");
            ulong dev;
            lock (_free)
            {
                dev = _free.Pop();
            }
            _mem.InitDevicePage(dev);
            Buffer.MemoryCopy(_mem.Address(e.Pfn), _mem.Address(dev), Page.Size, Page.Size);
            var range = new MmuNotifierRange(mm, va, va + Page.Size, MmuNotifierEvent.Migrate, true, Owner);
            Assert.Equal(Errno.Ok, mm.Notifiers.InvalidateRangeStart(range));
            lock (mm.PtlFor(slot))
            {
                Assert.Equal(e.Value, *slot);
                *slot = Pte.MakeSwap(SwapEntryType.DevicePrivate, dev, writable).Value;
            }
            _mem.AddMap(dev);
            mm.FlushTlb();
            mm.Notifiers.InvalidateRangeEnd(range);
            _mem.RemoveMap(e.Pfn);
            _mem.Put(e.Pfn);
            return dev;
        }
    }

    /// <summary>kernel: dev_pagemap_ops.migrate_to_ram — copy the page back into a new anonymous RAM page.</summary>
    public Errno MigrateToRam(in DevicePageFault fault)
    {
        var mm = (AddressSpace)fault.Space;
        Pte e = mm.Lookup(fault.Address, out int order, out ulong* slot);
        if (order != 0 || e.SwapType != SwapEntryType.DevicePrivate || e.Pfn != fault.Pfn)
        {
            return Errno.Ok; // somebody else already brought it back
        }
        Vma vma = mm.Vmas.Find(fault.Address)!;
        ulong ram = _mem.Allocate(0);
        if (ram == Page.NoPfn)
        {
            return Errno.ENOMEM;
        }
        Buffer.MemoryCopy(_mem.Address(fault.Pfn), _mem.Address(ram), Page.Size, Page.Size);
        mm.InitAnonPage(ram, vma, fault.Address);
        var range = new MmuNotifierRange(mm, fault.Address, fault.Address + Page.Size, MmuNotifierEvent.Migrate, true, Owner);
        mm.Notifiers.InvalidateRangeStart(range);
        bool done = false;
        lock (mm.PtlFor(slot))
        {
            if (*slot == e.Value)
            {
                *slot = Pte.Make(ram, e.SwapWritable && (vma.Flags & VmFlags.Write) != 0, Pte.Dirty).Value;
                done = true;
            }
        }
        mm.Notifiers.InvalidateRangeEnd(range);
        if (!done)
        {
            _mem.Put(ram);
            return Errno.Ok;
        }
        _mem.AddMap(ram);
        _mem.RemoveMap(fault.Pfn);
        _mem.Put(fault.Pfn);
        Interlocked.Increment(ref _migratedBack);
        return Errno.Ok;
    }

    public void Dispose()
    {
        _mem.UnregisterDevicePageMap(Map);
        NativeMemory.AlignedFree(_arena);
    }
}

/// <summary>Counts notifier callbacks of a whole address space (classic subscription).</summary>
internal sealed class EventCounter : MmuNotifier
{
    public int Starts;
    public readonly List<MmuNotifierEvent> Events = [];

    public override Errno InvalidateRangeStart(in MmuNotifierRange range)
    {
        lock (Events)
        {
            Starts++;
            Events.Add(range.Event);
        }
        return Errno.Ok;
    }
}

/// <summary>A scratch directory (under /dev/shm when present, so sparse DAX namespaces cost no disk) removed on dispose.</summary>
internal sealed class HmmTempDir : IDisposable
{
    public HmmTempDir()
    {
        string root = Directory.Exists("/dev/shm") ? "/dev/shm" : System.IO.Path.GetTempPath();
        Path = System.IO.Path.Combine(root, "hetmem-hmm-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (DirectoryNotFoundException)
        {
        }
    }
}
