using System.Numerics.Tensors;
using Lckv.Model;
using Lckv.Numerics;
using Lckv.Numerics.Backward;

namespace Lckv.Training;

/// <summary>Which KV a layer read: zeros (K null: a first pass reading upward), a constant, or a recorded version.</summary>
internal readonly record struct KvRef(float[]? K, float[]? V, int Record);

/// <summary>
/// How much of a layer a pass needs. A pass that does not advance only matters through the KV it writes, so layers
/// after its last KV-computing layer are skipped and that layer stops once its KV is written.
/// </summary>
internal enum LayerWork { Full, KvOnly, Skip }

/// <summary>What one layer evaluation keeps for its backward (a recorded pass), or its scratch (a no-grad pass).</summary>
internal sealed class LayerActivations(int layer, bool ownsKv, LayerWork work = LayerWork.Full)
{
    public readonly int Layer = layer;
    public readonly bool OwnsKv = ownsKv;
    public readonly LayerWork Work = work;
    public float[] X = [], Xn1 = [], Q = [], Att = [], Lse = [], H1 = [], Xn2 = [], G = [], U = [], A = [];
    /// <summary>The KV this evaluation wrote (post-RoPE K) and the gradients its readers add to it.</summary>
    public float[] K = [], V = [], DK = [], DV = [];
    public KvRef Read;

    public void Size(int rows, int hidden, int qDim, int kvDim, int inter, int heads)
    {
        long n = rows;
        X = Grow(X, n * hidden); Xn1 = Grow(Xn1, n * hidden); H1 = Grow(H1, n * hidden); Xn2 = Grow(Xn2, n * hidden);
        Q = Grow(Q, n * qDim); Att = Grow(Att, n * qDim); Lse = Grow(Lse, n * heads);
        G = Grow(G, n * inter); U = Grow(U, n * inter); A = Grow(A, n * inter);
        if (OwnsKv)
        {
            K = Grow(K, n * kvDim); V = Grow(V, n * kvDim); DK = Grow(DK, n * kvDim); DV = Grow(DV, n * kvDim);
        }
    }

    private static float[] Grow(float[] a, long n) => a.LongLength >= n ? a : new float[n];
}

public sealed unsafe partial class TrainableModel
{
    private LayerActivations[] _records = [];
    private LayerActivations? _scratch;
    private int _capacityRows;
    private int _batch, _seqLen, _rows;
    private float[] _hGroup = [], _hOut = [], _xnF = [], _tmp = [], _logits = [], _rowLoss = [], _rstd = [];
    private float[] _dCur = [], _dAcc = [], _dCarry = [], _dXn = [], _dInter = [], _dUp = [], _dAtt = [], _dQ = [];
    private float[][] _slotK = [], _slotV = [];
    private int[] _positions = [], _targets = [];
    private KvRef[] _current = [];

    private int Hidden => Config.HiddenSize;
    private int QDim => Config.NumAttentionHeads * Config.HeadDim;
    private int KvDim => Config.NumKeyValueHeads * Config.HeadDim;
    private int Inter => Config.IntermediateSize;
    private float Eps => Config.RmsNormEps;

    public float LossAndGradients(ReadOnlySpan<int> tokens, int batch, int seqLen, float gradScale = 1f)
        => Run(tokens, batch, seqLen, gradient: true, gradScale, logitsOut: default);

    public float Loss(ReadOnlySpan<int> tokens, int batch, int seqLen)
        => Run(tokens, batch, seqLen, gradient: false, 0f, logitsOut: default);

    /// <summary>Forward through the plan (no gradients): logits [batch*seqLen, vocab] into dst; returns the loss.</summary>
    public float Logits(ReadOnlySpan<int> tokens, int batch, int seqLen, Span<float> dst)
    {
        if (dst.Length < (long)batch * seqLen * Config.VocabSize) throw new ArgumentException("logits destination too short", nameof(dst));
        return Run(tokens, batch, seqLen, gradient: false, 0f, dst);
    }

    private float Run(ReadOnlySpan<int> tokens, int batch, int seqLen, bool gradient, float gradScale, Span<float> logitsOut)
    {
        if (batch <= 0 || seqLen < 2) throw new ArgumentException($"need batch >= 1 and seqLen >= 2, got {batch} x {seqLen}");
        if (tokens.Length != batch * seqLen) throw new ArgumentException($"tokens holds {tokens.Length} ids, expected {batch} x {seqLen}");
        int vocab = Config.VocabSize;
        foreach (int id in tokens)
            if ((uint)id >= (uint)vocab) throw new LckvException($"token id {id} is outside the vocabulary (size {vocab})");
        Prepare(batch, seqLen);
        int n = _rows, c = Hidden;
        for (int r = 0; r < n; r++)
        {
            _embed.Value.AsSpan(tokens[r] * c, c).CopyTo(_hGroup.AsSpan(r * c, c));
            int t = r % seqLen;
            _targets[r] = t == seqLen - 1 ? -1 : tokens[r + 1];
        }
        Array.Clear(_current);
        int rec = 0;
        foreach (var pass in _plan)
        {
            if (gradient && pass.Gradient)
            {
                Slice(_hGroup, n * c).CopyTo(_records[rec].X);
                for (int layer = pass.Start; layer < pass.End; layer++, rec++)
                {
                    var a = _records[rec];
                    if (a.Work == LayerWork.Skip) continue;
                    var dst = layer + 1 < pass.End ? _records[rec + 1].X : _hOut;
                    LayerForward(a, rec, dst, a.Work);
                }
            }
            else
            {
                var s = _scratch!;
                Slice(_hGroup, n * c).CopyTo(s.X);
                for (int layer = pass.Start; layer < pass.End; layer++)
                {
                    var work = Work(pass, layer);
                    if (work != LayerWork.Skip) LayerForward(s, -1, s.X, work, layer);
                }
                if (pass.Advances) Slice(s.X, n * c).CopyTo(_hOut);
            }
            if (pass.Advances) (_hGroup, _hOut) = (_hOut, _hGroup);
        }
        Norm(Slice(_hGroup, n * c), _finalNorm, Slice(_xnF, n * c), n);
        var logits = Slice(_logits, n * vocab);
        Linear(Slice(_xnF, n * c), _head, logits, n);
        if (!logitsOut.IsEmpty) logits.CopyTo(logitsOut);
        int count = batch * (seqLen - 1);
        double sum = CrossEntropy.Apply(logits, _targets.AsSpan(0, n), vocab, _rowLoss, gradient ? logits : default, gradScale / count);
        if (gradient) Backward(tokens);
        return (float)(sum / count);
    }

    private void Prepare(int batch, int seqLen)
    {
        int n = batch * seqLen;
        _batch = batch;
        _seqLen = seqLen;
        _rows = n;
        if (seqLen > _rope.MaxPositions) _rope = new RopeTable(Config.HeadDim, Config.RopeTheta, seqLen);
        if (_records.Length == 0)
        {
            var list = new List<LayerActivations>();
            foreach (var pass in _plan)
                if (pass.Gradient)
                    for (int l = pass.Start; l < pass.End; l++) list.Add(new LayerActivations(l, Map.ComputesKv(l), Work(pass, l)));
            _records = list.ToArray();
            _scratch = new LayerActivations(-1, ownsKv: false);
            _slotK = new float[Map.KvLayerCount][];
            _slotV = new float[Map.KvLayerCount][];
            for (int i = 0; i < _slotK.Length; i++) { _slotK[i] = []; _slotV[i] = []; }
            _current = new KvRef[Map.KvLayerCount];
        }
        if (_positions.Length < n) { _positions = new int[n]; _targets = new int[n]; }
        for (int r = 0; r < n; r++) _positions[r] = r % seqLen;
        if (n <= _capacityRows) return;
        _capacityRows = n;
        int c = Hidden, qd = QDim, kvd = KvDim, inter = Inter, heads = Config.NumAttentionHeads;
        long rows = n;
        foreach (var a in _records) a.Size(n, c, qd, kvd, inter, heads);
        _scratch!.Size(n, c, qd, kvd, inter, heads);
        for (int i = 0; i < _slotK.Length; i++) { _slotK[i] = new float[rows * kvd]; _slotV[i] = new float[rows * kvd]; }
        _hGroup = new float[rows * c]; _hOut = new float[rows * c]; _xnF = new float[rows * c]; _tmp = new float[rows * c];
        _logits = new float[rows * Config.VocabSize]; _rowLoss = new float[rows]; _rstd = new float[rows];
        _dCur = new float[rows * c]; _dAcc = new float[rows * c]; _dCarry = new float[rows * c]; _dXn = new float[rows * c];
        _dInter = new float[rows * inter]; _dUp = new float[rows * inter];
        _dAtt = new float[rows * qd]; _dQ = new float[rows * qd];
    }

    // a.X (rows, hidden) -> dst (rows, hidden); dst may be a.X. record >= 0: a is recorded and owns the KV it writes.
    private void LayerForward(LayerActivations a, int record, float[] dst, LayerWork work, int layer = -1)
    {
        if (layer < 0) layer = a.Layer;
        var lp = _layers[layer];
        int n = _rows, c = Hidden, qd = QDim, kvd = KvDim, inter = Inter;
        var cfg = Config;
        var positions = _positions.AsSpan(0, n);
        var xn1 = Slice(a.Xn1, n * c);
        Norm(Slice(a.X, n * c), lp.InputNorm, xn1, n);
        if (Map.ComputesKv(layer))
        {
            int slot = Map.KvIndex(layer);
            bool own = record >= 0;
            float[] k = own ? a.K : _slotK[slot], v = own ? a.V : _slotV[slot];
            Linear(xn1, lp.K!, Slice(k, n * kvd), n);
            Linear(xn1, lp.V!, Slice(v, n * kvd), n);
            Numerics.Rope.Apply(Slice(k, n * kvd), positions, cfg.NumKeyValueHeads, _rope);
            _current[slot] = new KvRef(k, v, own ? record : -1);
        }
        if (work == LayerWork.KvOnly) return;
        var q = Slice(a.Q, n * qd);
        Linear(xn1, lp.Q, q, n);
        Numerics.Rope.Apply(q, positions, cfg.NumAttentionHeads, _rope);
        var src = _current[Map.ReadsKvIndex(layer)];
        a.Read = src;
        var att = Slice(a.Att, n * qd);
        if (src.K is null) att.Clear(); // zeros read: softmax of equal scores times zero values is exactly zero
        else
            DenseAttention.Forward(q, src.K, src.V, _batch, _seqLen, cfg.NumAttentionHeads, cfg.NumKeyValueHeads, cfg.HeadDim,
                _masks[layer], 1f / MathF.Sqrt(cfg.HeadDim), att, a.Lse);
        var tmp = Slice(_tmp, n * c);
        var h1 = Slice(a.H1, n * c);
        Linear(att, lp.O, tmp, n);
        TensorPrimitives.Add(Slice(a.X, n * c), tmp, h1);
        var xn2 = Slice(a.Xn2, n * c);
        Norm(h1, lp.PostNorm, xn2, n);
        var g = Slice(a.G, n * inter);
        var u = Slice(a.U, n * inter);
        var act = Slice(a.A, n * inter);
        Linear(xn2, lp.Gate, g, n);
        Linear(xn2, lp.Up, u, n);
        Activations.SwiGlu(g, u, act);
        Linear(act, lp.Down, tmp, n);
        TensorPrimitives.Add(h1, tmp, Slice(dst, n * c));
    }

    private void Backward(ReadOnlySpan<int> tokens)
    {
        int n = _rows, c = Hidden, vocab = Config.VocabSize;
        var dlogits = Slice(_logits, n * vocab);
        var dxnF = Slice(_dXn, n * c);
        LinearBackward(dlogits, Slice(_xnF, n * c), _head, dxnF, accumulate: false, n);
        var dCarry = Slice(_dCarry, n * c);
        dCarry.Clear();
        RmsNormBackward.Apply(dxnF, Slice(_hGroup, n * c), _finalNorm.Value, Eps, dCarry, _finalNorm.Grad, _rstd, n);
        foreach (var a in _records)
        {
            if (!a.OwnsKv) continue;
            Array.Clear(a.DK, 0, n * KvDim);
            Array.Clear(a.DV, 0, n * KvDim);
        }
        var dCur = Slice(_dCur, n * c);
        var dAcc = Slice(_dAcc, n * c);
        int rec = _records.Length;
        for (int p = _plan.Count - 1; p >= 0; p--)
        {
            var pass = _plan[p];
            if (!pass.Gradient) continue;
            // the advancing pass receives the gradient of the group's output; the others only feed KV forward
            if (pass.Advances)
            {
                dCarry.CopyTo(dCur);
                dAcc.Clear();
            }
            else dCur.Clear();
            for (int layer = pass.End - 1; layer >= pass.Start; layer--)
            {
                var a = _records[--rec];
                if (a.Work != LayerWork.Skip) LayerBackward(a, dCur);
            }
            // every pass of a group starts from the group's input: their input gradients add up
            TensorPrimitives.Add(dAcc, dCur, dAcc);
            bool firstRecorded = p == 0 || !_plan[p - 1].Gradient || _plan[p - 1].Start != pass.Start;
            if (firstRecorded) dAcc.CopyTo(dCarry);
        }
        for (int r = 0; r < n; r++)
        {
            var row = _embed.Grad.AsSpan(tokens[r] * c, c);
            TensorPrimitives.Add(row, dCarry.Slice(r * c, c), row);
        }
    }

    // dCur holds the gradient of the layer's output on entry and of its input on exit
    private void LayerBackward(LayerActivations a, Span<float> dCur)
    {
        var lp = _layers[a.Layer];
        var cfg = Config;
        int n = _rows, c = Hidden, qd = QDim, kvd = KvDim, inter = Inter;
        var positions = _positions.AsSpan(0, n);
        var dXn = Slice(_dXn, n * c);
        var xn1 = Slice(a.Xn1, n * c);
        bool any = false;
        if (a.Work == LayerWork.KvOnly) goto Kv; // dCur is zero: only the KV this layer wrote carries gradient
        var dA = Slice(_dInter, n * inter);
        var dU = Slice(_dUp, n * inter);
        LinearBackward(dCur, Slice(a.A, n * inter), lp.Down, dA, accumulate: false, n);
        SwiGluBackward.Apply(dA, Slice(a.G, n * inter), Slice(a.U, n * inter), dA, dU);
        var xn2 = Slice(a.Xn2, n * c);
        LinearBackward(dA, xn2, lp.Gate, dXn, accumulate: false, n);
        LinearBackward(dU, xn2, lp.Up, dXn, accumulate: true, n);
        RmsNormBackward.Apply(dXn, Slice(a.H1, n * c), lp.PostNorm.Value, Eps, dCur, lp.PostNorm.Grad, _rstd, n);
        var src = a.Read;
        if (src.K is not null)
        {
            var dAtt = Slice(_dAtt, n * qd);
            var dQ = Slice(_dQ, n * qd);
            LinearBackward(dCur, Slice(a.Att, n * qd), lp.O, dAtt, accumulate: false, n);
            Span<float> dk = default, dv = default;
            if (src.Record >= 0)
            {
                dk = Slice(_records[src.Record].DK, n * kvd);
                dv = Slice(_records[src.Record].DV, n * kvd);
            }
            DenseAttention.Backward(Slice(a.Q, n * qd), src.K, src.V!, Slice(a.Att, n * qd), a.Lse, dAtt, _batch, _seqLen,
                cfg.NumAttentionHeads, cfg.NumKeyValueHeads, cfg.HeadDim, _masks[a.Layer], 1f / MathF.Sqrt(cfg.HeadDim), dQ, dk, dv);
            RopeBackward.Apply(dQ, positions, cfg.NumAttentionHeads, _rope);
            LinearBackward(dQ, xn1, lp.Q, dXn, accumulate: false, n);
            any = true;
        }
    Kv:
        if (a.OwnsKv)
        {
            // every reader of this KV comes later in the forward, so its gradient is complete here
            var dk = Slice(a.DK, n * kvd);
            RopeBackward.Apply(dk, positions, cfg.NumKeyValueHeads, _rope);
            LinearBackward(dk, xn1, lp.K!, dXn, accumulate: any, n);
            LinearBackward(Slice(a.DV, n * kvd), xn1, lp.V!, dXn, accumulate: true, n);
            any = true;
        }
        if (any) RmsNormBackward.Apply(dXn, Slice(a.X, n * c), lp.InputNorm.Value, Eps, dCur, lp.InputNorm.Grad, _rstd, n);
    }

    private LayerWork Work(PlanPass pass, int layer)
    {
        if (pass.Advances) return LayerWork.Full;
        int lastKv = pass.Start;
        for (int l = pass.Start; l < pass.End; l++)
            if (Map.ComputesKv(l)) lastKv = l;
        return layer < lastKv ? LayerWork.Full : layer == lastKv ? LayerWork.KvOnly : LayerWork.Skip;
    }

    private static void Linear(ReadOnlySpan<float> x, Parameter w, Span<float> y, int n)
    {
        fixed (float* p = w.Value) MatMul.Multiply(x, View(p, w), y, n);
    }

    private void Norm(ReadOnlySpan<float> x, Parameter w, Span<float> y, int n)
    {
        fixed (float* p = w.Value) RmsNorm.Apply(x, View(p, w), Eps, y, n);
    }

    // y = x·Wᵀ: dx (+)= dy·W, dW += dyᵀ·x
    private static void LinearBackward(ReadOnlySpan<float> dy, ReadOnlySpan<float> x, Parameter w, Span<float> dx, bool accumulate, int n)
    {
        int outDim = Rows(w), inDim = Cols(w);
        MatMulBackward.InputGradient(dy, w.Value, dx, n, outDim, inDim, accumulate);
        MatMulBackward.WeightGradient(dy, x, w.Grad, n, outDim, inDim);
    }
}
