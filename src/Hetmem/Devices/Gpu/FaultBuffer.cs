namespace Hetmem.Devices.Gpu;

/// <summary>
/// The replayable fault buffer (kernel: the GPU's replayable fault buffer that UVM reads through GET/PUT, nouveau's
/// <c>nvif</c> fault buffer): a fixed-size ring of <see cref="GpuFaultRecord"/>s. Execution units write at PUT; the
/// servicing thread fetches from GET. A full ring makes the writer wait (and counts an overflow) instead of dropping
/// the fault, so no fault is ever lost.
/// </summary>
/// <remarks>
/// Locking: <c>_lock</c> (a leaf: nothing is taken under it) protects the ring, GET, PUT and the count; writers and
/// the reader wait on its monitor. Allocation-free after construction.
/// </remarks>
public sealed class FaultBuffer
{
    private readonly object _lock = new();
    private readonly GpuFaultRecord[] _ring;   // guarded by _lock
    private int _get;                          // guarded by _lock; next entry to fetch
    private int _count;                        // guarded by _lock; entries between GET and PUT
    private bool _closed;                      // guarded by _lock
    private long _overflows;                   // guarded by _lock

    /// <summary>Creates a ring of <paramref name="entries"/> records.</summary>
    /// <exception cref="ArgumentOutOfRangeException">When <paramref name="entries"/> is not positive.</exception>
    public FaultBuffer(int entries)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(entries);
        _ring = new GpuFaultRecord[entries];
    }

    /// <summary>Number of slots.</summary>
    public int Capacity => _ring.Length;

    /// <summary>Entries waiting to be fetched (racy read for statistics).</summary>
    public int Pending
    {
        get
        {
            lock (_lock)
            {
                return _count;
            }
        }
    }

    /// <summary>Times a writer found the ring full.</summary>
    public long Overflows
    {
        get
        {
            lock (_lock)
            {
                return _overflows;
            }
        }
    }

    /// <summary>
    /// Writes a fault record at PUT and wakes the servicing thread (kernel: the GMMU writing an entry and raising the
    /// fault interrupt). Waits while the ring is full. Returns false when the buffer was closed.
    /// </summary>
    public bool Write(in GpuFaultRecord record)
    {
        lock (_lock)
        {
            if (_count == _ring.Length && !_closed)
            {
                _overflows++;
                while (_count == _ring.Length && !_closed)
                {
                    Monitor.Wait(_lock);
                }
            }
            if (_closed)
            {
                return false;
            }
            _ring[(_get + _count) % _ring.Length] = record;
            _count++;
            Monitor.PulseAll(_lock);
            return true;
        }
    }

    /// <summary>
    /// Copies up to <paramref name="destination"/>.Length entries from GET and advances GET (kernel: UVM
    /// <c>fetch_fault_buffer_entries</c>). Returns the number fetched; 0 when empty.
    /// </summary>
    public int Fetch(Span<GpuFaultRecord> destination)
    {
        lock (_lock)
        {
            int n = Math.Min(destination.Length, _count);
            for (int i = 0; i < n; i++)
            {
                destination[i] = _ring[(_get + i) % _ring.Length];
            }
            _get = (_get + n) % _ring.Length;
            _count -= n;
            if (n > 0)
            {
                Monitor.PulseAll(_lock);
            }
            return n;
        }
    }

    /// <summary>
    /// Discards every pending entry (kernel: UVM's fault-buffer flush before a BATCH_FLUSH replay): the units that
    /// wrote them are still stalled and fault again after the replay if their access is still not satisfied.
    /// Returns the number discarded.
    /// </summary>
    public int Flush()
    {
        lock (_lock)
        {
            int n = _count;
            _get = (_get + n) % _ring.Length;
            _count = 0;
            if (n > 0)
            {
                Monitor.PulseAll(_lock);
            }
            return n;
        }
    }

    /// <summary>Waits until an entry is pending, the buffer is closed, or <paramref name="timeoutMs"/> passed; true when entries are pending.</summary>
    public bool WaitForEntries(int timeoutMs)
    {
        lock (_lock)
        {
            if (_count == 0 && !_closed)
            {
                Monitor.Wait(_lock, timeoutMs);
            }
            return _count > 0;
        }
    }

    /// <summary>Wakes a thread blocked in <see cref="WaitForEntries"/> without writing an entry (a doorbell for other work).</summary>
    public void Kick()
    {
        lock (_lock)
        {
            Monitor.PulseAll(_lock);
        }
    }

    /// <summary>Closes the buffer: writers and waiters return.</summary>
    public void Close()
    {
        lock (_lock)
        {
            _closed = true;
            Monitor.PulseAll(_lock);
        }
    }
}
