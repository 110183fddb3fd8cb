using Hetmem.Diagnostics.Scheduling;

namespace Hetmem.Mm;

/// <summary>
/// The per-address-space reader/writer lock (kernel: mmap_lock). Faults, <c>HmmRange.Fault</c> and
/// <c>MigrateVma</c> hold it for read; Mmap, Munmap, Mprotect, Mremap, Fork and Exit hold it for write.
/// Thread-affine: the thread that takes it releases it.
/// </summary>
public sealed class MmapLock : IDisposable
{
    private readonly ReaderWriterLockSlim _rw = new(LockRecursionPolicy.NoRecursion);

    /// <summary>Takes the lock for read (kernel: mmap_read_lock).</summary>
    public void EnterRead()
    {
        SchedulePoint.BeforeEnterRead(_rw, "mmap_read_lock");
        _rw.EnterReadLock();
    }

    /// <summary>Tries to take the lock for read without waiting (kernel: mmap_read_trylock).</summary>
    public bool TryEnterRead() => _rw.TryEnterReadLock(0);

    /// <summary>Releases the read side (kernel: mmap_read_unlock).</summary>
    public void ExitRead()
    {
        _rw.ExitReadLock();
        SchedulePoint.Here("mmap_read_unlock");
    }

    /// <summary>Takes the lock for write (kernel: mmap_write_lock).</summary>
    public void EnterWrite()
    {
        SchedulePoint.BeforeEnterWrite(_rw, "mmap_write_lock");
        _rw.EnterWriteLock();
    }

    /// <summary>Releases the write side (kernel: mmap_write_unlock).</summary>
    public void ExitWrite()
    {
        _rw.ExitWriteLock();
        SchedulePoint.Here("mmap_write_unlock");
    }

    /// <summary>True when the current thread holds the read side.</summary>
    public bool IsReadHeld => _rw.IsReadLockHeld;

    /// <summary>True when the current thread holds the write side.</summary>
    public bool IsWriteHeld => _rw.IsWriteLockHeld;

    /// <summary>True when the current thread holds either side (kernel: mmap_assert_locked).</summary>
    public bool IsHeld => _rw.IsReadLockHeld || _rw.IsWriteLockHeld;

    /// <summary>Takes the read side for a <c>using</c> scope.</summary>
    public ReadScope Read()
    {
        EnterRead();
        return new ReadScope(this);
    }

    /// <summary>Takes the write side for a <c>using</c> scope.</summary>
    public WriteScope Write()
    {
        EnterWrite();
        return new WriteScope(this);
    }

    /// <inheritdoc/>
    public void Dispose() => _rw.Dispose();

    /// <summary>Releases the read side when disposed.</summary>
    public readonly struct ReadScope(MmapLock owner) : IDisposable
    {
        /// <inheritdoc/>
        public void Dispose() => owner.ExitRead();
    }

    /// <summary>Releases the write side when disposed.</summary>
    public readonly struct WriteScope(MmapLock owner) : IDisposable
    {
        /// <inheritdoc/>
        public void Dispose() => owner.ExitWrite();
    }
}
